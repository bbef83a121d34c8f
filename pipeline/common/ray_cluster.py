"""Connecting to the Ray cluster that ``extract.engine: ray`` and ``cv.engine: ray`` share.

The cluster is ``RAY_ADDRESS`` (or ``extract.ray_address``); without either a local one
is started, with more logical CPUs than cores declared so that Ray Data's own read and
write tasks still find room beside the extraction's actors on a small machine (on 2 cores,
actors holding every CPU stall the pipeline). An address where nothing answers fails in
``extract.ray_timeout_s`` seconds with one line, not after Ray's own minutes of retries.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from pipeline.common.cli import leave_running
from pipeline.common.errors import PipelineError

log = logging.getLogger(__name__)

LOCAL_CPUS = 8  # logical CPUs declared to a local cluster (see the module docstring)


def ray_module(engine_key: str):
    """``import ray``, or one line saying how to install it (``engine_key``: the params key that asked for it)."""
    try:
        import ray
    except ImportError as err:
        raise PipelineError(f"{engine_key}: ray needs Ray, an optional extra: pip install -e '.[ray]' "
                            f"(or set {engine_key}: local).") from err
    return ray


def connect(address: str | None, timeout: float, *, engine_key: str):
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), or start a local one, once per process; return ``ray``."""
    ray = ray_module(engine_key)
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s (waiting at most %g s)", address, timeout)
        _probe(address, timeout)
        _init_within(ray, address, timeout)
    else:
        log.info("starting a local Ray cluster (%d logical CPUs)", LOCAL_CPUS)
        ray.init(num_cpus=LOCAL_CPUS, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


def _unreachable(address: str, why: str) -> PipelineError:
    return PipelineError(f"No Ray cluster answers at {address!r} (extract.ray_address or RAY_ADDRESS): {why}. "
                         "Start one there (ray start --head, then use the address it prints), or unset both "
                         "for a local one; extract.ray_timeout_s sets how long to wait.")


def _probe(address: str, timeout: float) -> None:
    """Fail in at most ``timeout`` seconds when nothing listens at ``host:port`` (Ray itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():  # "auto", or a form Ray parses itself
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        why = f"nothing answered within {timeout:g} s" if isinstance(err, TimeoutError) else (
            f"{type(err).__name__}: {err.strerror or err}")
        raise _unreachable(address, why) from err


def _init_within(ray, address: str, timeout: float) -> None:
    """``ray.init`` on a thread that may be left behind: a port that accepts but is no Ray cluster would
    otherwise keep the stage waiting for Ray's retries (minutes)."""
    failure: list[BaseException] = []

    def init() -> None:
        try:
            ray.init(address=address, log_to_driver=False)
        except BaseException as err:
            failure.append(err)

    thread = threading.Thread(target=init, name="ray-init", daemon=True)
    thread.start()
    leave_running(thread)  # from the start: a Ctrl-C during the wait leaves it running too
    thread.join(timeout)
    if thread.is_alive():
        raise _unreachable(address, f"it accepted a connection but did not answer as a Ray cluster within "
                                    f"{timeout:g} s")
    if failure:
        err = failure[0]
        if isinstance(err, (ConnectionError, RuntimeError, ValueError)):
            detail = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise _unreachable(address, detail) from err
        raise err
