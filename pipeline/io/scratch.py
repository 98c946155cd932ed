"""Local scratch folders that a killed run does not leave behind for ever.

Each is named ``derain-PID-…`` after the process that made it. A SIGKILLed run cannot clean
up, so the next run on the machine removes the scratch folders of processes that no longer
exist (downloaded sources, ``.part`` encodes): :func:`sweep_stale_scratch`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^derain-(\d+)-")
MIN_AGE_S = 60.0  # a folder younger than this may belong to a process still starting up


def scratch_dir(purpose: str, parent: str | Path | None = None) -> tempfile.TemporaryDirectory:
    """A temporary folder ``derain-PID-PURPOSE-xxxx`` under ``parent`` (default: the temp dir)."""
    return tempfile.TemporaryDirectory(prefix=f"derain-{os.getpid()}-{purpose}-", dir=parent)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (someone else's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_scratch(parent: str | Path | None = None, *, min_age_s: float = MIN_AGE_S) -> int:
    """Remove scratch folders whose process is gone; returns how many were removed."""
    root = Path(parent or tempfile.gettempdir())
    removed = 0
    now = time.time()
    for entry in root.glob("derain-*"):
        match = _NAME.match(entry.name)
        if not match or not entry.is_dir() or pid_alive(int(match.group(1))):
            continue
        try:
            if now - entry.stat().st_mtime < min_age_s:
                continue
            shutil.rmtree(entry)
        except OSError as exc:
            logger.debug("could not remove stale scratch %s: %s", entry, exc)
            continue
        removed += 1
        logger.info("removed %s, left by a run that was killed", entry)
    return removed
