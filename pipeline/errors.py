"""The project's errors: one hierarchy under :class:`DerainError`.

Whatever the project raises on purpose is a ``DerainError`` whose message says what to change.
The data plane sorts failures with it: a ``DerainError`` or an ``OSError`` while one video is
processed fails that video alone (a ``failed`` row in the manifest, the run goes on); any other
exception type is unexpected (a bug, CUDA out of memory) and stops the run once a few videos
in a row fail with it (:class:`RunStopped`). The ``derain`` command turns a :class:`UsageError`
into exit code 2 and an :class:`InfrastructureError` (a storage endpoint, credentials or a Ray
cluster the command needs is missing or unreachable) into exit code 3.

j4r may not import pipeline, so j4r keeps its own ``j4r.checkpoint.CheckpointError``. The
:class:`CheckpointError` here subclasses both ``DerainError`` and j4r's, and
:func:`checkpoint_errors` re-raises j4r's as this one where pipeline calls into j4r: code that
catches either class keeps working. (``j4r.checkpoint`` imports only json/hashlib-level
modules, so importing it here keeps this module light.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from j4r.checkpoint import CheckpointError as J4RCheckpointError


class DerainError(Exception):
    """Base of every error the project raises on purpose; the message says what to change."""


class UsageError(DerainError):
    """Bad command-line arguments or flow parameters, or a missing input (exit code 2)."""


class VideoError(DerainError):
    """A video cannot be read or written; the message says why and what to do."""


class StorageError(DerainError):
    """A storage URL or key is unusable; the message says what to change."""


class CheckpointError(DerainError, J4RCheckpointError):
    """A checkpoint folder is missing, incomplete, or does not match its config."""


class ModelRegistryError(CheckpointError):
    """A registry operation is refused or a download does not match its recorded sha256."""


class RunnerError(DerainError):
    """The runner cannot go on (a worker kept dying on the same video)."""


class InfrastructureError(DerainError):
    """A service the command needs is missing or unreachable: not the caller's arguments, not
    the videos (exit code 3). The message says what to check."""


class EndpointUnreachable(StorageError, InfrastructureError):
    """The storage endpoint does not answer (refused, unresolvable, timed out)."""


class CredentialsError(StorageError, InfrastructureError):
    """No credentials for the store were found, or the store rejects them."""


class RayUnavailable(RunnerError, InfrastructureError):
    """The Ray cluster named by ``--address`` / ``RAY_ADDRESS`` cannot be joined."""


class WorkersUnplaceable(RunnerError, InfrastructureError):
    """Ray cannot place the workers: no node offers what each needs (a GPU, enough CPUs)."""


class VideoFailures(DerainError):
    """Some videos failed; the run was committed and reported (the flow run ends failed)."""


class RunStopped(DerainError):
    """The circuit breaker stopped a run: videos kept failing with an unexpected error.

    Everything finished before the stop is committed; ``summary`` is the run's summary.
    """

    def __init__(self, message: str, summary: Any = None):
        super().__init__(message)
        self.summary = summary


# What may fail one video without stopping the run: the project's own errors and I/O errors.
VIDEO_FAILURES = (DerainError, OSError)


def is_video_failure(exc: BaseException) -> bool:
    """True for errors that belong to one video; False for unexpected ones (bugs, OOM)."""
    return isinstance(exc, VIDEO_FAILURES)


@contextmanager
def checkpoint_errors() -> Iterator[None]:
    """Re-raise j4r's ``CheckpointError`` as the pipeline's (same message)."""
    try:
        yield
    except J4RCheckpointError as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(str(exc)) from exc


@contextmanager
def usage_errors(*types: type[BaseException]) -> Iterator[None]:
    """Re-raise ``types`` (and the project's own errors) as :class:`UsageError`.

    For the checks a command makes before it starts work: a bad URL, checkpoint or option
    there is the caller's to fix.

    An :class:`InfrastructureError` passes through unchanged: a dead endpoint or missing
    credentials are not the caller's arguments (exit code 3, not 2).
    """
    try:
        yield
    except (UsageError, InfrastructureError):
        raise
    except (DerainError, *types) as exc:
        message = exc.args[0] if isinstance(exc, LookupError) and exc.args else str(exc)
        raise UsageError(str(message)) from exc
