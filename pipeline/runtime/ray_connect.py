"""Joining a Ray cluster, or starting a local one: shared by the Ray runner and Ray Train."""

from __future__ import annotations

import logging
import os

import ray


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join ``address`` (``auto``, ``host:port``, ``ray://...``), else the cluster ``RAY_ADDRESS``
    names (a Ray Job, the local stack), else start a local Ray sized to this machine."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
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
