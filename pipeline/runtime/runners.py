"""Runners execute video tasks on stages: in-process here, on Ray actors in ``ray_runner``.

Both yield a :class:`~pipeline.job.worker.TaskResult` as each task finishes, so the driver
writes every manifest shard itself: a task that is retried after a worker died is only ever
recorded once. :func:`build_runner` is what ``derain run`` and the ``derain-archive`` flow call.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from pipeline.errors import UsageError
from pipeline.job.plan import VideoTask
from pipeline.job.worker import RunContext, TaskResult, process_task
from pipeline.stage.config import StageConfig
from pipeline.stage.derain import DerainStage

RUNNER_KINDS = ("ray", "sequential")


# on_frames(task, frames written so far): a task's progress while it runs.
FramesCallback = Callable[[VideoTask, int], None]


class Runner(Protocol):
    description: str

    def run(
        self,
        tasks: list[VideoTask],
        context: RunContext,
        on_frames: FramesCallback | None = None,
    ) -> Iterator[TaskResult]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RunnerSettings:
    """Where stages run: ``sequential`` (this process) or ``ray`` (``workers`` actors on the
    cluster ``address`` names; none: ``RAY_ADDRESS``, else a local Ray)."""

    kind: Literal["ray", "sequential"] = "ray"
    address: str | None = None
    workers: int = 1

    def __post_init__(self) -> None:
        if self.kind not in RUNNER_KINDS:
            raise UsageError(f"runner {self.kind!r}: choose one of {list(RUNNER_KINDS)}")
        if self.workers < 1:
            raise UsageError(f"workers must be at least 1, not {self.workers}")

    @property
    def runs_here(self) -> bool:
        """True when the workers run on this machine (sequential, or a local Ray started here),
        so this machine's devices are theirs."""
        if self.kind == "sequential":
            return True
        return self.address in (None, "local") and not os.environ.get("RAY_ADDRESS")


class SequentialRunner:
    """One stage in this process; tasks in order. The reference the Ray runner must match.

    It takes the threads the process has (``resources.cpus`` is what a Ray actor reserves) and
    runs one clip at a time (``clips_per_batch`` needs concurrent videos).
    """

    def __init__(self, config: StageConfig):
        self.stage = DerainStage(replace(config, clips_per_batch=1))
        self.stage.setup()
        self.description = f"sequential on {self.stage.device}"

    def run(
        self,
        tasks: list[VideoTask],
        context: RunContext,
        on_frames: FramesCallback | None = None,
    ) -> Iterator[TaskResult]:
        for task in tasks:
            report = (lambda n, task=task: on_frames(task, n)) if on_frames else None
            yield process_task(self.stage, task, context, worker="local", on_frames=report)

    def close(self) -> None:
        pass


def build_runner(config: StageConfig, settings: RunnerSettings | None = None) -> Runner:
    """A sequential runner, or Ray actors (joining ``settings.address`` or a local Ray)."""
    settings = settings or RunnerSettings()
    if settings.kind == "sequential":
        return SequentialRunner(config)
    from pipeline.runtime.ray_runner import RayRunner  # imports ray

    return RayRunner(config, workers=settings.workers, address=settings.address)
