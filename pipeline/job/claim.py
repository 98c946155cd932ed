"""One run at a time on a destination: a claim file created atomically, released at the end.

Two ``derain run`` on the same DST would otherwise take the same run id and both do all the
work. Before planning, a run creates ``DST/_claim.json`` with the store's atomic create
(``O_EXCL`` on a local filesystem, a conditional ``PUT`` with ``If-None-Match: *`` on S3):
exactly one of two racing runs succeeds. The claim names the run, host, pid and start time,
and a background thread refreshes its ``heartbeat_at`` while the run lives. Another run finds
it and refuses (:class:`ClaimedError`, exit 2) unless the claim is stale: its owner process is
gone (same host), or its heartbeat is older than the TTL (another host, e.g. a killed driver
pod). A stale claim is taken over. The claim is deleted when the run ends, also on failure.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import UsageError
from pipeline.io.scratch import pid_alive
from pipeline.io.storage import Location, create_exclusive, open_location

logger = logging.getLogger(__name__)

CLAIM_KEY = "_claim.json"
# A claim whose heartbeat is older than this is stale (its owner is gone or cut off).
DEFAULT_TTL_S = 600.0


class ClaimedError(UsageError):
    """Another live run holds the destination (exit code 2; the message names it)."""


def claim_ttl_s() -> float:
    return float(os.environ.get("DERAIN_CLAIM_TTL_S", DEFAULT_TTL_S))


def _now() -> datetime:
    return datetime.now(UTC)


def stale_reason(claim: dict[str, Any], ttl_s: float, now: datetime | None = None) -> str | None:
    """Why ``claim`` no longer holds (its owner is gone), or None while it does."""
    now = now or _now()
    pid = claim.get("pid")
    if claim.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
        return f"its process {pid} on this host is gone"
    try:
        beat = datetime.fromisoformat(str(claim.get("heartbeat_at") or claim.get("started_at")))
    except ValueError:
        return "it is unreadable"
    age = (now - beat).total_seconds()
    if age > ttl_s:
        return f"its heartbeat is {age:.0f} s old (TTL {ttl_s:.0f} s)"
    return None


def describe(claim: dict[str, Any]) -> str:
    return (
        f"run {claim.get('run_id') or '(planning)'} on host {claim.get('host')}, pid "
        f"{claim.get('pid')}, since {claim.get('started_at')}"
    )


@dataclass
class Claim:
    """A held claim; :meth:`release` deletes it if it is still ours."""

    location: Location
    token: str
    record: dict[str, Any]
    interval_s: float
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.location.url(CLAIM_KEY)

    def _read(self) -> dict[str, Any] | None:
        return read_claim(self.location)

    def set_run_id(self, run_id: str) -> None:
        self.record["run_id"] = run_id
        self._write()

    def _write(self) -> None:
        self.record["heartbeat_at"] = _now().isoformat()
        current = self._read()
        if current is not None and current.get("token") != self.token:
            logger.error("the claim %s was taken over by %s", self.url, describe(current))
            self._stop.set()
            return
        payload = json.dumps(self.record, indent=2).encode()
        _overwrite(self.location, CLAIM_KEY, payload)

    def start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self._write()
                except Exception as exc:  # a missed beat is retried at the next one
                    logger.warning("claim heartbeat failed: %s", exc)

        self._thread = threading.Thread(target=beat, name="derain-claim", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            current = self._read()
            if current is not None and current.get("token") == self.token:
                path = self.location.path(CLAIM_KEY)
                self.location.fs.rm_file(path)
        except Exception as exc:  # the next run takes a stale claim over
            logger.warning("could not release the claim %s: %s", self.url, exc)


def _overwrite(location: Location, key: str, payload: bytes) -> None:
    path = location.path(key)
    if location.protocol == "file":
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)  # a reader never sees half a claim
    else:
        location.fs.pipe_file(path, payload)


def read_claim(location: Location) -> dict[str, Any] | None:
    """The claim at ``location`` (None: there is none); ``{}`` if it cannot be parsed."""
    path = location.path(CLAIM_KEY)
    try:
        data = location.fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        claim = json.loads(data)
    except ValueError:
        return {}
    return claim if isinstance(claim, dict) else {}


def acquire(
    destination: str,
    options: dict[str, Any] | None = None,
    *,
    info: dict[str, Any] | None = None,
    ttl_s: float | None = None,
) -> Claim:
    """Claim ``destination`` for this process, or raise :class:`ClaimedError`."""
    ttl_s = claim_ttl_s() if ttl_s is None else ttl_s
    location = open_location(destination, options)
    if location.protocol == "file":
        os.makedirs(location.root, exist_ok=True)
    token = uuid.uuid4().hex
    started = _now().isoformat()
    record = {
        "token": token,
        "run_id": None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": started,
        "heartbeat_at": started,
        **(info or {}),
    }
    payload = json.dumps(record, indent=2).encode()
    for _ in range(3):
        if create_exclusive(location, CLAIM_KEY, payload):
            claim = Claim(location, token, record, interval_s=max(0.5, ttl_s / 5))
            claim.start_heartbeat()
            logger.info("claimed %s", claim.url)
            return claim
        current = read_claim(location)
        if current is None:
            continue  # released meanwhile: try again
        if current == {}:
            # Unreadable: a writer that died mid-write (local) or a damaged object.
            reason = _unreadable_stale(location, ttl_s)
        else:
            reason = stale_reason(current, ttl_s)
        if reason is None:
            shown = describe(current) if current else "an unreadable claim"
            raise ClaimedError(
                f"{destination} is in use by {shown} ({location.url(CLAIM_KEY)}); wait for "
                "that run to finish, or, if it is dead on another host, delete that file or "
                f"wait {ttl_s:.0f} s for its claim to go stale"
            )
        logger.warning("taking over the stale claim %s: %s", location.url(CLAIM_KEY), reason)
        path = location.path(CLAIM_KEY)
        with suppress(FileNotFoundError):
            location.fs.rm_file(path)
    raise ClaimedError(f"{destination}: could not claim it (other runs kept taking it)")


def _unreadable_stale(location: Location, ttl_s: float) -> str | None:
    """An unreadable claim is stale once it is older than a minute (a live writer finishes
    writing one in far less) or the TTL, whichever is smaller."""
    try:
        info = location.fs.info(location.path(CLAIM_KEY))
    except FileNotFoundError:
        return "it is gone"
    modified = info.get("mtime") or info.get("LastModified")
    if hasattr(modified, "timestamp"):
        modified = modified.timestamp()
    age = time.time() - float(modified or 0)
    return f"it is unreadable and {age:.0f} s old" if age > min(60.0, ttl_s) else None


@contextmanager
def claimed(
    destination: str, options: dict[str, Any] | None = None, **kwargs: Any
) -> Iterator[Claim]:
    """Hold the destination's claim for the block; released on the way out, even on errors."""
    claim = acquire(destination, options, **kwargs)
    try:
        yield claim
    finally:
        claim.release()
