"""Ray Core actors, each holding one J4R-Net on its device.

Ray Data's actor pools route batches to any actor and rebuild state on restart, so they cannot
hold a clip's recurrent memory: here each video goes to one actor that keeps the memory for the
whole clip. An actor that dies is restarted by Ray (``max_restarts``) and the driver resubmits
its video, which starts over from frame 0; the driver records only finished videos, so the
manifest holds every frame exactly once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    OutOfMemoryError,
    RayActorError,
    WorkerCrashedError,
)

from pipeline.errors import RunnerError
from pipeline.job.manifest import VideoRow
from pipeline.job.plan import VideoTask
from pipeline.job.worker import RunContext, TaskResult, process_task
from pipeline.runtime.ray_connect import connect
from pipeline.stage.config import StageConfig
from pipeline.stage.derain import DerainStage

logger = logging.getLogger(__name__)

# First wait before a video whose worker was killed for memory is tried again (doubles).
OOM_BACKOFF_S = 5.0


def is_out_of_memory(exc: BaseException) -> bool:
    """True when Ray's memory monitor killed the worker (not a crash of the video's own)."""
    if isinstance(exc, OutOfMemoryError):
        return True
    text = str(exc)
    return "running low on memory" in text or "OutOfMemoryError" in text


class DerainActor:
    """Holds a :class:`DerainStage`; ``setup`` runs inside the actor's process."""

    def __init__(self, config: StageConfig):
        import torch

        torch.set_num_threads(max(1, int(config.resources.cpus)))
        self.stage = DerainStage(config)
        self.stage.setup()
        self.name = f"{ray.util.get_node_ip_address()}:{os.getpid()}"

    def info(self) -> dict[str, str]:
        return {
            "name": self.stage.info.name,
            "version": self.stage.info.version,
            "sha256": self.stage.info.sha256,
            "device": self.stage.device,
            "pid": os.getpid(),
        }

    def process(self, task: VideoTask, context: RunContext):
        return process_task(self.stage, task, context, worker=self.name)


class RayRunner:
    """``workers`` actors, each de-raining ``config.clips_per_batch`` videos at once as one
    batch, with the CPUs and GPUs the stage declares (``config.resources``).

    Videos of an actor that dies are resubmitted once it has been restarted.
    """

    def __init__(
        self,
        config: StageConfig,
        *,
        workers: int = 1,
        address: str | None = None,
        max_attempts: int = 3,
    ):
        connect(address)
        self.max_attempts = max_attempts
        self.clips_per_worker = config.clips_per_batch
        resources = config.resources
        actor_cls = ray.remote(DerainActor).options(
            max_concurrency=self.clips_per_worker + 1,  # + 1 keeps info() answering while busy
            num_cpus=resources.cpus,
            num_gpus=resources.gpus,
            max_restarts=max_attempts,
            max_task_retries=0,
        )
        self.actors = [actor_cls.remote(config) for _ in range(workers)]
        try:
            infos = ray.get([a.info.remote() for a in self.actors])
        except RayActorError as exc:  # the stage could not load in the actor
            self.close()
            cause = getattr(exc, "error_msg", None) or str(exc)
            last = [line for line in str(cause).splitlines() if line.strip()][-1:] or [""]
            raise RunnerError(f"the Ray workers could not start: {last[0].strip()}") from exc
        self.info = infos[0]
        self.description = (
            f"ray, {workers} actor(s) x {self.clips_per_worker} clip(s) on {infos[0]['device']}"
        )

    @property
    def actor_pids(self) -> list[int]:
        return [info["pid"] for info in ray.get([a.info.remote() for a in self.actors])]

    def run(self, tasks: list[VideoTask], context: RunContext) -> Iterator[TaskResult]:
        queue = list(reversed(tasks))
        attempts: dict[str, int] = {}
        in_flight: dict[Any, tuple[VideoTask, Any]] = {}
        delayed: list[tuple[float, VideoTask]] = []  # (not before, task): OOM backoff
        idle = [actor for actor in self.actors for _ in range(self.clips_per_worker)]
        while queue or in_flight or delayed:
            now = time.monotonic()
            for item in [d for d in delayed if d[0] <= now]:
                delayed.remove(item)
                queue.append(item[1])
            while queue and idle:
                task, actor = queue.pop(), idle.pop()
                attempts[task.task_id] = attempts.get(task.task_id, 0) + 1
                in_flight[actor.process.remote(task, context)] = (task, actor)
            wait_s = max(0.0, min(d[0] for d in delayed) - now) if delayed else None
            if not in_flight:
                time.sleep(wait_s or 0.0)
                continue
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=wait_s)
            if not ready:
                continue
            task, actor = in_flight.pop(ready[0])
            idle.append(actor)
            try:
                result = ray.get(ready[0])
            except (RayActorError, WorkerCrashedError, OutOfMemoryError) as exc:
                self._wait_until_alive(actor)
                count = attempts[task.task_id]
                oom = is_out_of_memory(exc)
                if count >= self.max_attempts:
                    if oom:  # the video, not the run: fail it alone and go on
                        yield self._out_of_memory(task, context, count)
                        continue
                    raise RunnerError(
                        f"{task.source.url}: worker died {count} times; giving up the run"
                    ) from exc
                if oom:
                    delay = OOM_BACKOFF_S * 2 ** (count - 1)
                    logger.warning(
                        "out of memory on %s (Ray's memory monitor killed the worker); "
                        "retrying in %.0f s",
                        task.source.url,
                        delay,
                    )
                    delayed.append((time.monotonic() + delay, task))
                    continue
                logger.warning("worker died on %s; redoing it (%s)", task.source.url, exc)
                queue.append(task)
                continue
            yield result

    def _out_of_memory(self, task: VideoTask, context: RunContext, count: int) -> TaskResult:
        now = datetime.now(UTC)
        row = VideoRow.for_source(
            context.run_id,
            task.video_id,
            task.source,
            "failed",
            error_type="OutOfMemory",
            error_message=(
                f"out of memory: Ray's memory monitor killed the worker {count} times on this "
                "video; give workers more memory (fewer --workers or --clips-per-worker)"
            ),
            model_name=self.info.get("name"),
            model_version=self.info.get("version"),
            model_sha256=self.info.get("sha256"),
            device=self.info.get("device"),
            started_at=now,
            finished_at=now,
        )
        return TaskResult(task, row, None, unexpected=False)

    @staticmethod
    def _wait_until_alive(actor, timeout_s: float = 300.0) -> None:
        """Block until a restarting actor answers again (calls to it fail fast meanwhile)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ray.get(actor.info.remote(), timeout=30)
                return
            except (ActorUnavailableError, GetTimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
