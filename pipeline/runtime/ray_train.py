"""Distributed J4R-Net training on Ray Train (V2): DDP workers, checkpoints in object storage.

Lives in ``pipeline/runtime/``, the one folder whose modules import ray. Each worker runs j4r's
:func:`~j4r.train.train_step` on its own shard of synthetic batches (``sample_batch(...,
rank)``: a pure function of seed, step and rank) drawn from clean photos it downloads from
object storage. Gradients are averaged by DDP (gloo on CPU, NCCL on GPU) in both stages of j4r's
schedule. Every ``checkpoint_every`` steps rank 0 reports j4r's ``train_state.pt`` (model,
optimizer, step) as a Ray Train checkpoint under ``storage_path/name``; a restarted worker group
(``FailureConfig(max_failures)``) and a later ``fit()`` with the same name and storage resume
from the latest one. The last checkpoint also holds ``final/``: an exported j4r checkpoint (with
``final/stage1``) that :mod:`pipeline.registry.models` can publish.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pipeline.errors import RunnerError
from pipeline.io.storage import open_location

logger = logging.getLogger(__name__)

STAGE1 = "stage1"
FINAL = "final"


@dataclass(frozen=True)
class RayTrainJob:
    """What every worker needs; plain values so that it travels to workers as a dict."""

    net: dict[str, Any]  # j4r.config.to_dict(NetConfig)
    train: dict[str, Any]  # j4r.config.to_dict(TrainConfig)
    preset: str = "custom"
    version: str = "dev"  # recorded in the exported checkpoint's config.json
    content_url: str | None = None  # photos prefix; None: j4r's installed training photos
    storage_options: dict[str, Any] = field(default_factory=dict)  # for content_url
    checkpoint_every: int = 100  # steps between checkpoints
    pause_at_step: int | None = None  # stop (resumably) once this many steps are done
    threads_per_worker: int = 1  # torch CPU threads in each worker


@dataclass(frozen=True)
class RayTrainResult:
    steps: int  # the step the run reached
    finished: bool  # False when paused by ``pause_at_step``: fit again to continue
    final: Path | None  # exported j4r checkpoint folder (with stage1/) once finished
    checkpoint_dir: Path  # local copy of the latest Ray Train checkpoint
    metrics: dict[str, Any]  # rank 0's metrics of the latest checkpoint


class _StagePath(torch.nn.Module):
    """J4R-Net with one forward for both stages, so DDP all-reduces stage 1's gradients too.

    A frame ``(b, 1, h, w)`` takes the single-frame path, a clip ``(b, t, 1, h, w)`` the net.
    """

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, luma: torch.Tensor):
        return self.net.single_frame(luma) if luma.dim() == 4 else self.net(luma)


class _ThroughDDP:
    """What :func:`j4r.train.train_step` is given: both of its entry points run DDP's forward.

    ``train_step`` calls ``model(clip)`` in stage 2 and ``model.module.single_frame(frame)``
    in stage 1; calling ``single_frame`` on the bare net would skip DDP's gradient all-reduce
    and let the ranks drift apart.
    """

    def __init__(self, ddp: torch.nn.Module, core: torch.nn.Module):
        self.ddp = ddp
        self.module = self
        # The core's heads (or None): train_step adds their losses when set.
        self.gate = core.gate
        self.presence = core.presence

    def __call__(self, clip: torch.Tensor):
        return self.ddp(clip)

    def single_frame(self, luma: torch.Tensor):
        return self.ddp(luma)

    def parameters(self):
        return self.ddp.parameters()


def _wrap(core: torch.nn.Module, stage: int) -> _ThroughDDP:
    # Stage 1 leaves D-, F-, C- and JRC-Net out of the graph: DDP must look for unused ones.
    ddp = ray.train.torch.prepare_model(
        _StagePath(core), parallel_strategy_kwargs={"find_unused_parameters": stage == 1}
    )
    return _ThroughDDP(ddp, core)


def weights_digest(model: torch.nn.Module) -> str:
    """A short sha256 of every parameter's bytes: equal on all ranks iff weights are equal."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _gather(value: Any) -> list[Any]:
    """``value`` from every rank, in rank order (just ``[value]`` without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def _sources(job: RayTrainJob):
    if job.content_url:
        from pipeline.registry.content import download_training_sources

        return download_training_sources(job.content_url, job.storage_options)
    from j4r.sources import training_sources

    return training_sources()


def _restore(workdir: Path) -> dict[str, Any] | None:
    """j4r's training state from the latest Ray Train checkpoint; its stage1/ into workdir."""
    from j4r.train import load_state

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        state = load_state(Path(folder))
        if (Path(folder) / STAGE1).is_dir():
            shutil.copytree(Path(folder) / STAGE1, workdir / STAGE1, dirs_exist_ok=True)
    return state


@dataclass
class _Run:
    """One worker's view of the run (mutable: model, optimizer and wrapper change per stage)."""

    job: RayTrainJob
    core: Any  # J4RNet on this worker's device
    optimizer: torch.optim.Optimizer
    trainee: _ThroughDDP
    workdir: Path
    rank: int
    start_step: int
    started: float  # time.monotonic() minus the seconds of earlier attempts

    @property
    def record(self) -> dict[str, Any]:
        return {
            "preset": self.job.preset,
            "net": self.job.net,
            "train": self.job.train,
            "device": str(next(self.core.parameters()).device),
            "workers": ray.train.get_context().get_world_size(),
            "seconds": round(time.monotonic() - self.started, 1),
        }


def _export_stage1(run: _Run, net, step: int) -> None:
    from j4r.train import export

    if run.rank == 0:
        export(
            run.core,
            run.workdir / STAGE1,
            net=net,
            version=run.job.version + "-stage1",
            record={**run.record, "steps": step},
        )


def _report(run: _Run, step: int, terms: dict[str, float], *, total: int, net) -> None:
    """Metrics from every rank; rank 0 adds the checkpoint (and ``final/`` at the end)."""
    from j4r.train import export, save_state

    digests = _gather(weights_digest(run.core))
    metrics = {
        "step": step,
        "start_step": run.start_step,
        "weights_digests": digests,
        "seconds": round(time.monotonic() - run.started, 2),
        **terms,
    }
    if run.rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="j4r-ckpt-") as tmp:
        folder = Path(tmp)
        extra = {
            "elapsed_s": time.monotonic() - run.started,
            "config": {"net": run.job.net, "train": run.job.train, "preset": run.job.preset},
            "stage": int(terms["stage"]),
        }
        save_state(folder, run.core, run.optimizer, step, extra)
        if step == total and not (run.workdir / STAGE1).is_dir():
            _export_stage1(run, net, step)  # no stage 2 in this schedule
        if (run.workdir / STAGE1).is_dir():
            shutil.copytree(run.workdir / STAGE1, folder / STAGE1)
        if step == total:
            record = {**run.record, "steps": step}
            export(run.core, folder / FINAL, net=net, version=run.job.version, record=record)
            shutil.copytree(folder / STAGE1, folder / FINAL / STAGE1)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder))


def train_worker(job_values: dict[str, Any]) -> None:
    """The per-worker loop ``TorchTrainer`` runs (``job_values`` = ``asdict(RayTrainJob)``)."""
    from j4r.config import NetConfig, TrainConfig, from_dict
    from j4r.data import ClipSampler
    from j4r.model import build_model
    from j4r.train import make_optimizer, resume, sample_batch, stage_of, train_step

    job = RayTrainJob(**job_values)
    torch.set_num_threads(max(1, job.threads_per_worker))
    net, config = from_dict(NetConfig, job.net), from_dict(TrainConfig, job.train)
    total = config.stage1_steps + config.stage2_steps
    stop = total if job.pause_at_step is None else min(total, job.pause_at_step)
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    with tempfile.TemporaryDirectory(prefix="j4r-worker-") as tmp:
        workdir = Path(tmp)
        torch.manual_seed(config.seed)
        core = build_model(net).to(device)  # before resume: optimizer moments follow params
        saved = {"net": job.net, "train": job.train, "preset": job.preset}
        state = _restore(workdir)
        start, optimizer, elapsed = resume(core, state, saved_config=saved, config=config)
        if start >= stop:
            logger.info("rank %d: nothing to do, the run is at step %d", rank, start)
            return
        logger.info("rank %d: steps %d..%d on %s", rank, start, stop, device)
        sampler = ClipSampler(_sources(job), config.clip)
        run = _Run(
            job,
            core,
            optimizer,
            _wrap(core, stage_of(start, config)),
            workdir,
            rank,
            start,
            time.monotonic() - elapsed,
        )
        for step in range(start, stop):
            if step == config.stage1_steps and step > 0:
                _export_stage1(run, net, step)
                run.optimizer = make_optimizer(core, 2, config)
                run.trainee = _wrap(core, 2)
            batch = sample_batch(sampler, step, config, rank).to(device)
            terms = train_step(run.trainee, run.optimizer, batch, step=step, config=config)
            done = step + 1
            if done % job.checkpoint_every == 0 or done == stop:
                _report(run, done, terms, total=total, net=net)


def storage_target(storage_path: str, options: dict[str, Any] | None = None):
    """``(path, pyarrow filesystem or None)`` for ``RunConfig``: local paths are made
    absolute; object stores go through pyarrow's wrapper of the same fsspec filesystem that
    :func:`pipeline.io.storage.open_location` builds (endpoint and credentials alike)."""
    location = open_location(storage_path, options)
    if location.protocol == "file":
        return str(Path(location.root).resolve()), None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return location.root, PyFileSystem(FSSpecHandler(location.fs))


def train_on_ray(
    job: RayTrainJob,
    *,
    storage_path: str,
    name: str,
    num_workers: int = 2,
    use_gpu: bool = False,
    max_failures: int = 2,
    storage_options: dict[str, Any] | None = None,
    output_dir: Path | None = None,
) -> RayTrainResult:
    """Run (or continue) the Ray Train run ``storage_path/name`` on the connected Ray.

    Needs ``ray.init`` first (:func:`pipeline.runtime.ray_connect.connect`). The latest checkpoint
    is copied into ``output_dir`` (default: a new temp folder); once the schedule is done its
    ``final/`` is the exported j4r checkpoint.
    """
    path, filesystem = storage_target(storage_path, storage_options)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=dataclasses.asdict(job),
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": job.threads_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RunnerError(f"Ray Train run {name} reported no checkpoint")
    output_dir = Path(output_dir or tempfile.mkdtemp(prefix=f"{name}-"))
    local = Path(result.checkpoint.to_directory(str(output_dir)))
    metrics = dict(result.metrics or {})
    final = local / FINAL
    logger.info("Ray Train run %s at step %s; checkpoint %s", name, metrics.get("step"), local)
    return RayTrainResult(
        steps=int(metrics.get("step", 0)),
        finished=final.is_dir(),
        final=final if final.is_dir() else None,
        checkpoint_dir=local,
        metrics=metrics,
    )
