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

from pipeline import errors
from pipeline.errors import DerainError, RunnerError, WorkersUnplaceable
from pipeline.job.manifest import VideoRow
from pipeline.job.plan import VideoTask
from pipeline.job.worker import RunContext, TaskResult, process_task
from pipeline.runtime.ray_connect import connect
from pipeline.runtime.runners import FramesCallback
from pipeline.stage.config import StageConfig
from pipeline.stage.derain import DerainStage

logger = logging.getLogger(__name__)

# First wait before a video whose worker was killed for memory is tried again (doubles).
OOM_BACKOFF_S = 5.0
# How often the driver asks busy workers how many frames their videos have so far.
PROGRESS_EVERY_S = 2.0
# How long new workers may wait for Ray to place them (an autoscaler adding a node takes
# minutes); DERAIN_ACTOR_START_TIMEOUT_S overrides it.
START_TIMEOUT_S = 600.0


def is_out_of_memory(exc: BaseException) -> bool:
    """True when Ray's memory monitor killed the worker (not a crash of the video's own)."""
    if isinstance(exc, OutOfMemoryError):
        return True
    text = str(exc)
    return "running low on memory" in text or "OutOfMemoryError" in text


def stage_error(exc: RayActorError) -> DerainError:
    """The error an actor's constructor raised, as the project's own type where it was one
    (a ``UsageError`` such as ``--device cuda`` on a node without CUDA keeps exit code 2).

    Ray passes a failed constructor on as text only; its last line is ``module.Type: message``.
    """
    text = getattr(exc, "error_msg", None) or str(exc)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    name, _, message = last.partition(": ")
    if name.startswith("pipeline.errors."):
        cls = getattr(errors, name.rsplit(".", 1)[1], None)
        if isinstance(cls, type) and issubclass(cls, DerainError):
            return cls(f"the Ray workers could not start: {message}")
    return RunnerError(f"the Ray workers could not start: {last}")


class DerainActor:
    """Holds a :class:`DerainStage`; ``setup`` runs inside the actor's process."""

    def __init__(self, config: StageConfig):
        import torch

        torch.set_num_threads(max(1, int(config.resources.cpus)))
        self.stage = DerainStage(config)
        self.stage.setup()
        self.name = f"{ray.util.get_node_ip_address()}:{os.getpid()}"
        self.frames_so_far: dict[str, int] = {}  # task id -> frames written, while it runs

    def info(self) -> dict[str, str]:
        return {
            "name": self.stage.info.name,
            "version": self.stage.info.version,
            "sha256": self.stage.info.sha256,
            "device": self.stage.device,
            "pid": os.getpid(),
        }

    def progress(self) -> dict[str, int]:
        """Frames written so far by each video this actor is working on."""
        return dict(self.frames_so_far)

    def process(self, task: VideoTask, context: RunContext):
        def report(count: int) -> None:
            self.frames_so_far[task.task_id] = count

        try:
            return process_task(self.stage, task, context, worker=self.name, on_frames=report)
        finally:
            self.frames_so_far.pop(task.task_id, None)


class RayRunner:
    """``workers`` actors, each de-raining ``config.clips_per_batch`` videos at once as one
    batch, with the CPUs and GPUs the stage declares (``config.resources``).

    Videos of an actor that dies are resubmitted once it has been restarted; an actor out of
    restarts is replaced by a new one.
    """

    def __init__(
        self,
        config: StageConfig,
        *,
        workers: int = 1,
        address: str | None = None,
        max_attempts: int = 3,
        max_restarts: int | None = None,
        start_timeout_s: float | None = None,
    ):
        connect(address)
        self.max_attempts = max_attempts
        self.clips_per_worker = config.clips_per_batch
        self.resources = config.resources
        self.start_timeout_s = start_timeout_s or float(
            os.environ.get("DERAIN_ACTOR_START_TIMEOUT_S", START_TIMEOUT_S)
        )
        # A worker lost for good (out of in-place restarts) is replaced by a new actor, up to
        # this many times in all; past that something kills every worker and the run stops.
        self.replacements_left = workers * max_attempts
        self._new_actor = lambda: (
            ray.remote(DerainActor)
            .options(
                max_concurrency=self.clips_per_worker + 1,  # + 1 keeps info() answering
                num_cpus=self.resources.cpus,
                num_gpus=self.resources.gpus,
                max_restarts=max_attempts if max_restarts is None else max_restarts,
                max_task_retries=0,
            )
            .remote(config)
        )
        actors = [self._new_actor() for _ in range(workers)]
        self.info = self._start(actors)[0]
        self.actors = actors
        self.description = (
            f"ray, {workers} actor(s) x {self.clips_per_worker} clip(s) on {self.info['device']}"
        )

    def _start(self, actors: list) -> list[dict]:
        """Wait until ``actors`` answer and return their ``info()``; a stage that cannot load,
        or actors Ray cannot place within ``start_timeout_s``, stop the run with one line
        saying why (the actors are killed)."""
        pending = {actor.info.remote(): index for index, actor in enumerate(actors)}
        infos: dict[int, dict] = {}
        deadline = time.monotonic() + self.start_timeout_s
        warned = False
        try:
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkersUnplaceable(self._unplaceable(len(pending)))
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=min(left, 15))
                for ref in ready:
                    infos[pending.pop(ref)] = ray.get(ref)
                if pending and not warned:
                    logger.warning("waiting for Ray to place workers: %s", self._needs())
                    warned = True
        except BaseException as exc:
            for actor in actors:
                ray.kill(actor)
            if isinstance(exc, RayActorError):  # the stage could not load in the actor
                raise stage_error(exc) from exc
            raise
        return [infos[index] for index in range(len(actors))]

    def _needs(self) -> str:
        need = f"{self.resources.cpus:g} CPU"
        if self.resources.gpus:
            need += f" and {self.resources.gpus:g} GPU"
        have = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
        offer = ", ".join(f"{v:g} {k}" for k, v in sorted(have.items())) or "nothing"
        return f"each needs {need}; the cluster has {offer} free"

    def _unplaceable(self, count: int) -> str:
        hint = (
            "add GPU nodes, or run with --device cpu"
            if self.resources.gpus
            else "use fewer --workers or --cpus-per-worker, or add nodes"
        )
        return (
            f"Ray could not place {count} worker(s) within {self.start_timeout_s:g} s "
            f"({self._needs()}): {hint}; DERAIN_ACTOR_START_TIMEOUT_S waits longer for an "
            "autoscaler"
        )

    @property
    def actor_pids(self) -> list[int]:
        return [info["pid"] for info in ray.get([a.info.remote() for a in self.actors])]

    def run(
        self,
        tasks: list[VideoTask],
        context: RunContext,
        on_frames: FramesCallback | None = None,
    ) -> Iterator[TaskResult]:
        queue = list(reversed(tasks))
        asked_at = time.monotonic()
        attempts: dict[str, int] = {}
        in_flight: dict[Any, tuple[VideoTask, int]] = {}  # ref -> (task, worker slot)
        delayed: list[tuple[float, VideoTask]] = []  # (not before, task): OOM backoff
        idle = [slot for slot in range(len(self.actors)) for _ in range(self.clips_per_worker)]
        while queue or in_flight or delayed:
            now = time.monotonic()
            for item in [d for d in delayed if d[0] <= now]:
                delayed.remove(item)
                queue.append(item[1])
            while queue and idle:
                task, slot = queue.pop(), idle.pop()
                attempts[task.task_id] = attempts.get(task.task_id, 0) + 1
                in_flight[self.actors[slot].process.remote(task, context)] = (task, slot)
            wait_s = max(0.0, min(d[0] for d in delayed) - now) if delayed else None
            if not in_flight:
                time.sleep(wait_s or 0.0)
                continue
            if on_frames:  # wake up to ask the workers how far their videos are
                wait_s = min(wait_s if wait_s is not None else PROGRESS_EVERY_S, PROGRESS_EVERY_S)
                if time.monotonic() - asked_at >= PROGRESS_EVERY_S:
                    self._report_progress(in_flight, on_frames)
                    asked_at = time.monotonic()
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=wait_s)
            if not ready:
                continue
            task, slot = in_flight.pop(ready[0])
            idle.append(slot)
            try:
                result = ray.get(ready[0])
            except (RayActorError, WorkerCrashedError, OutOfMemoryError) as exc:
                self._revive(slot)
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

    def _report_progress(self, in_flight: dict, on_frames: FramesCallback) -> None:
        """Hand ``on_frames`` each running video's frames so far (best effort: a busy or
        restarting worker that does not answer within a few seconds is asked next time)."""
        running = {task.task_id: task for task, _ in in_flight.values()}
        slots = sorted({slot for _, slot in in_flight.values()})
        refs = [self.actors[slot].progress.remote() for slot in slots]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=5)
        for ref in done:
            try:
                counts = ray.get(ref)
            except (RayActorError, WorkerCrashedError):
                continue  # its video comes back as a failed task and is redone
            for task_id, count in counts.items():
                if task_id in running:
                    on_frames(running[task_id], count)

    def _revive(self, slot: int) -> None:
        """Wait for the worker in ``slot`` to come back; one Ray will not restart any more
        (out of ``max_restarts``) is replaced by a new actor."""
        try:
            self._wait_until_alive(self.actors[slot])
            return
        except RayActorError:  # dead for good
            pass
        if self.replacements_left <= 0:
            raise RunnerError("workers keep dying and were replaced too often; giving up the run")
        self.replacements_left -= 1
        logger.warning("a worker is gone for good (out of restarts); starting a new one")
        ray.kill(self.actors[slot])
        actor = self._new_actor()
        self._start([actor])
        self.actors[slot] = actor

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
