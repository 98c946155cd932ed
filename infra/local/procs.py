"""Find or stop the processes of ONE local Ray instance, by PID, and nothing else.

`ray stop` kills every Ray process of the user on the machine (other people's test clusters
included). This finds ours instead: processes whose environment holds MARKER (``NAME=VALUE``,
set in the environment of `ray start`) or whose command line names the marker's value (the Ray
temp dir), plus all their descendants (Ray's workers and agents rewrite their process title and
with it their environment block, but stay children of the raylet). Zombies are ignored.

    python infra/local/procs.py find DERAIN_RAY_TAG=/path/to/ray-temp
    python infra/local/procs.py kill DERAIN_RAY_TAG=/path/to/ray-temp [--timeout 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _table() -> dict[int, tuple[int, str, bytes, bytes]]:
    """pid -> (ppid, state, environ, cmdline) for every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = _read(f"/proc/{entry}/stat")
            environ = _read(f"/proc/{entry}/environ")
            cmdline = _read(f"/proc/{entry}/cmdline")
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        table[int(entry)] = (int(fields[1]), fields[0].decode(), environ, cmdline)
    return table


def _ancestors(table: dict, pid: int) -> set[int]:
    seen = set()
    while pid in table and pid not in seen:
        seen.add(pid)
        pid = table[pid][0]
    return seen


def find(marker: str) -> list[int]:
    """Live PIDs that carry ``marker`` (NAME=VALUE) and their descendants."""
    name, _, value = marker.partition("=")
    if not name or not value:
        raise ValueError(f"marker {marker!r} is not NAME=VALUE")
    env_entry = marker.encode()
    table = _table()
    found = {
        pid
        for pid, (_, _, environ, cmdline) in table.items()
        if env_entry in environ.split(b"\0") or value.encode() in cmdline
    }
    grew = True
    while grew:
        grew = False
        for pid, (ppid, *_rest) in table.items():
            if pid not in found and ppid in found:
                found.add(pid)
                grew = True
    found -= _ancestors(table, os.getpid())  # never ourselves or the shell that called us
    return sorted(pid for pid in found if table[pid][1] != "Z")


def kill(marker: str, timeout: float = 10.0) -> list[int]:
    """SIGTERM the marked processes, SIGKILL what is left after ``timeout``; returns survivors."""
    deadline = time.monotonic() + timeout
    sig = signal.SIGTERM
    while True:
        pids = find(marker)
        if not pids:
            return []
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                return pids
            sig, deadline = signal.SIGKILL, time.monotonic() + 5
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["find", "kill"])
    parser.add_argument("marker", help="NAME=VALUE set in the environment of `ray start`")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.action == "find":
        pids = find(args.marker)
    else:
        pids = kill(args.marker, args.timeout)
        if pids:
            print(f"still running after SIGKILL: {pids}", file=sys.stderr)
    if pids:
        print(" ".join(map(str, pids)))
    return 1 if args.action == "kill" and pids else 0


if __name__ == "__main__":
    sys.exit(main())
