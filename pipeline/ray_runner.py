"""Ray Core actors, each holding one J4R-Net on its device. The ONLY module that imports ray.

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
from typing import Any

import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    WorkerCrashedError,
)

from pipeline.derain import DerainStage
from pipeline.plan import VideoTask
from pipeline.runners import Result
from pipeline.worker import RunContext, process_task

logger = logging.getLogger(__name__)


class DerainActor:
    """Holds a :class:`DerainStage`; ``setup`` runs inside the actor's process."""

    def __init__(self, stage_kwargs: dict[str, Any], threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.stage = DerainStage(**stage_kwargs)
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


class RayRunner:
    """``workers`` actors, each de-raining ``clips_per_worker`` videos at once as one batch.

    Videos of an actor that dies are resubmitted once it has been restarted.
    """

    def __init__(
        self,
        stage_kwargs: dict[str, Any],
        *,
        workers: int = 1,
        address: str | None = None,
        cpus_per_worker: float = 1.0,
        clips_per_worker: int = 1,
        max_attempts: int = 3,
    ):
        connect(address)
        self.max_attempts = max_attempts
        self.clips_per_worker = clips_per_worker
        stage_kwargs = {**stage_kwargs, "clips_per_batch": clips_per_worker}
        actor_cls = ray.remote(DerainActor).options(
            max_concurrency=clips_per_worker + 1,  # + 1 keeps info() answering while busy
            num_cpus=cpus_per_worker,
            num_gpus=DerainStage(**stage_kwargs).resources.gpus,  # declared by the stage
            max_restarts=max_attempts,
            max_task_retries=0,
        )
        self.actors = [
            actor_cls.remote(stage_kwargs, threads=int(cpus_per_worker)) for _ in range(workers)
        ]
        infos = ray.get([a.info.remote() for a in self.actors])
        self.description = (
            f"ray, {workers} actor(s) x {clips_per_worker} clip(s) on {infos[0]['device']}"
        )

    @property
    def actor_pids(self) -> list[int]:
        return [info["pid"] for info in ray.get([a.info.remote() for a in self.actors])]

    def run(self, tasks: list[VideoTask], context: RunContext) -> Iterator[Result]:
        queue = list(reversed(tasks))
        attempts: dict[str, int] = {}
        in_flight: dict[Any, tuple[VideoTask, Any]] = {}
        idle = [actor for actor in self.actors for _ in range(self.clips_per_worker)]
        while queue or in_flight:
            while queue and idle:
                task, actor = queue.pop(), idle.pop()
                attempts[task.task_id] = attempts.get(task.task_id, 0) + 1
                in_flight[actor.process.remote(task, context)] = (task, actor)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            task, actor = in_flight.pop(ready[0])
            idle.append(actor)
            try:
                row, frames = ray.get(ready[0])
            except (RayActorError, WorkerCrashedError) as exc:
                self._wait_until_alive(actor)
                if attempts[task.task_id] >= self.max_attempts:
                    raise RuntimeError(
                        f"{task.source.url}: worker died {attempts[task.task_id]} "
                        f"times; giving up the run"
                    ) from exc
                logger.warning("worker died on %s; redoing it (%s)", task.source.url, exc)
                queue.append(task)
                continue
            yield task, row, frames

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
