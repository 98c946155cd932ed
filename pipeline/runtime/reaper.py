"""A local Ray that ``derain`` started never outlives it, even when it is SIGKILLed.

Ray stops its processes on a normal exit, but a driver killed with SIGKILL leaves the raylet's
dashboard and runtime-env agents running (parent 1, ~200 MB, deaf to SIGTERM). So after
starting a local Ray, the driver starts this module as a small watcher holding the read end of
a pipe whose write end only the driver has: the kernel closes it when the driver dies, however
it dies. On end-of-file the watcher stops every process of the Ray session (TERM, then KILL)
and removes the session folder. Ray's processes rename themselves (``ray::DashboardAgent``),
so they are recognised by what they hold open: their log files in the session folder (and,
for the rest, by the session folder on their command line). It never imports Ray or torch.

    python -m pipeline.runtime.reaper SESSION_DIR    # stdin: the pipe
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

GRACE_S = 3.0
# Write ends of the watchers' pipes: held open, never written, for as long as this process lives.
_LIFELINES: list[int] = []


def _uses(process: Path, folder: str) -> bool:
    """Whether a ``/proc/PID`` names ``folder`` on its command line or holds a file in it."""
    if folder.encode() in (process / "cmdline").read_bytes():
        return True
    for fd in (process / "fd").iterdir():
        try:
            if os.readlink(fd).startswith(folder + "/"):
                return True
        except OSError:
            continue
    return False


def session_processes(folder: str, *, exclude: set[int]) -> list[int]:
    """Pids of the processes that belong to the Ray session in ``folder`` (Linux ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            if _uses(entry, folder):
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # gone, or not ours
            os.kill(pid, sig)


def stop_session(session_dir: str, *, grace_s: float = GRACE_S) -> int:
    """Stop the processes of one Ray session; returns how many there were."""
    me = {os.getpid()}
    pids = session_processes(session_dir, exclude=me)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and session_processes(session_dir, exclude=me):
        time.sleep(0.1)
    _signal_all(session_processes(session_dir, exclude=me), signal.SIGKILL)
    shutil.rmtree(session_dir, ignore_errors=True)
    return len(pids)


def start_reaper(session_dir: str) -> subprocess.Popen:
    """Start the watcher for ``session_dir``; it acts once this process is gone.

    The pipe's write end stays open in this process only (not inherited by Ray's workers
    started later: Python makes descriptors non-inheritable), so its end-of-file means exactly
    "the driver died or exited".
    """
    read_end, write_end = os.pipe()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "pipeline.runtime.reaper", session_dir],
        stdin=read_end,
        start_new_session=True,  # a Ctrl-C to the driver's group must not stop the watcher
        close_fds=True,
    )
    os.close(read_end)
    _LIFELINES.append(write_end)
    logger.debug("reaper %d watches %s", watcher.pid, session_dir)
    return watcher


def main(argv: list[str]) -> int:
    session_dir = argv[0]
    sys.stdin.buffer.read()  # blocks until the driver is gone
    stop_session(session_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
