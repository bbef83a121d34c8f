"""How every entry point starts and ends: logging, one-line errors, exit statuses.

Exit status 0 on success; 2 with one ``error: ...`` line for anything the user can
fix (a ``PipelineError``), and for argparse's usage errors; 130 with one
``interrupted`` line on Ctrl-C; the audit stage's 1 for a leak between splits. Outputs are
written atomically (``pipeline.common.io``), so an interrupted stage leaves none.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from pipeline.common.errors import PipelineError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

_left_running: list[threading.Thread] = []


def leave_running(thread: threading.Thread) -> None:
    """Record a thread that may be abandoned inside native code, which nothing can stop (``ray.init``
    waiting on an address that never answers). While it runs, the process must not finalise the
    interpreter: C++ destructors running under it aborted the process (``std::bad_alloc``, exit -6, in
    3 of 6 runs here), so ``run`` on the command line then ends the process itself, after its line."""
    _left_running.append(thread)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """A usage mistake, like any other: one line, exit status 2."""
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def stage_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose help is the stage module's docstring, and whose errors are one line."""
    return _Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run an entry point's ``main``; report user errors and Ctrl-C as one line each, and last.

    The line is printed after leaving the ``except`` block: until then the traceback keeps the
    failed frames alive, and with them any generator suspended in a ``with tqdm(...)``, whose
    progress bar would print its closing line after ours when it is finally collected.
    ``argv`` None is the command line (a stage run as a program): only then may ``run`` end the
    process itself (``leave_running``); called in-process with arguments, it returns the status.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recorded = len(_left_running)
    try:
        return main(argv)
    except PipelineError as err:
        line, code = f"error: {' '.join(str(err).split())}", EXIT_USER_ERROR  # one line, whatever a library said
    except KeyboardInterrupt:
        line, code = "interrupted", EXIT_INTERRUPTED
    gc.collect()  # frames caught in reference cycles too
    sys.stderr.flush()
    print(line, file=sys.stderr)
    if argv is None and any(thread.is_alive() for thread in _left_running[recorded:]):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no interpreter finalisation under a thread still in native code (leave_running)
    return code
