"""Runners execute video tasks on stages: in-process here, on Ray actors in ``ray_runner``.

Both yield ``(task, row, frames)`` as videos finish, so the driver writes every manifest shard
itself: a task that is retried after a worker died is only ever recorded once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from pipeline.derain import DerainStage
from pipeline.manifest import FrameRows, VideoRow
from pipeline.plan import VideoTask
from pipeline.worker import RunContext, process_task

Result = tuple[VideoTask, VideoRow, FrameRows | None]


class Runner(Protocol):
    description: str

    def run(self, tasks: list[VideoTask], context: RunContext) -> Iterator[Result]: ...

    def close(self) -> None: ...


class SequentialRunner:
    """One stage in this process; tasks in order. The reference the Ray runner must match."""

    def __init__(self, stage_factory: Callable[[], DerainStage]):
        self.stage = stage_factory()
        self.stage.setup()
        self.description = f"sequential on {self.stage.device}"

    def run(self, tasks: list[VideoTask], context: RunContext) -> Iterator[Result]:
        for task in tasks:
            row, frames = process_task(self.stage, task, context, worker="local")
            yield task, row, frames

    def close(self) -> None:
        pass
