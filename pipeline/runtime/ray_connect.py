"""Joining a Ray cluster, or starting a local one: shared by the Ray runner and Ray Train."""

from __future__ import annotations

import logging
import os
import socket

import ray

from pipeline.errors import RayUnavailable

logger = logging.getLogger(__name__)

# How long the TCP probe of a cluster address waits: ray.init itself retries an unreachable GCS
# for minutes, repeating warnings, before it gives up.
PROBE_TIMEOUT_S = 5.0


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` or ``ray://HOST:PORT``; None for ``auto`` and the like."""
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def check_reachable(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`RayUnavailable` (one line) unless ``address`` accepts a TCP connection."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except OSError as exc:
        raise RayUnavailable(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or type(exc).__name__}): "
            "start it (`ray start --head`, infra/local/stack.sh start), fix --address / "
            "RAY_ADDRESS, or leave both unset to start a local Ray"
        ) from exc


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join ``address`` (``auto``, ``host:port``, ``ray://...``), else the cluster ``RAY_ADDRESS``
    names (a Ray Job, the local stack), else start a local Ray sized to this machine.

    An address that does not answer is :class:`RayUnavailable` within seconds, also when this
    process is already connected (library callers, tests): an explicit address is a promise."""
    if ray.is_initialized():
        if address:
            check_reachable(address)
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except ConnectionError as exc:  # `auto` with no cluster, a GCS that went away
            raise RayUnavailable(
                f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}; "
                "start it, fix --address / RAY_ADDRESS, or leave both unset for a local Ray"
            ) from exc
    else:
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
        from pipeline.runtime.reaper import start_reaper

        start_reaper(_session_dir())


def _session_dir() -> str:
    """The folder of the local Ray session this process started: all its processes name it
    on their command lines. No public API gives it in Ray 2.60."""
    from ray._private import worker

    return worker._global_node.get_session_dir_path()
