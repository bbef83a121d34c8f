"""Run one pipeline stage in a fresh process, as dvc does, and measure it (shared by the benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def run_stage(work: Path, module: str, args: list[str], *, env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run ``python -m module`` in ``work``; wall seconds, the largest process's peak RSS (MiB), stdout.

    The peak RSS is the larger of the process's own and its largest child's (worker pools).
    """
    code = ("import resource, runpy, sys\n"
            f"try:\n    runpy.run_module({module!r}, run_name='__main__')\n"
            "finally:\n    self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
            "    print(f'peak_rss_kib={max(self, kids)}', file=sys.stderr)")
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "PYTHONWARNINGS": "ignore", **(env or {})}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{module} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rss = int(done.stderr.rsplit("peak_rss_kib=", 1)[1].split()[0]) / 1024
    return wall, rss, done.stdout
