"""``train-j4r``: train J4R-Net on Ray, evaluate it, publish it to the model registry.

A thin Prefect flow over :mod:`pipeline.registry.content`, :mod:`pipeline.runtime.ray_train`,
:mod:`pipeline.tools.evaluation` and :mod:`pipeline.registry.models`; heavy imports (torch, ray)
happen inside the tasks. Training checkpoints go to ``storage_path/run_name``: running the flow
again with the same ``run_name`` continues that run from its latest checkpoint. The registry's
``latest.json`` moves only after the whole new version is uploaded.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

from flows.settings import configured

STORAGE_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2)}


@task(name="ensure-training-content", **STORAGE_RETRIES)
def ensure_content(content_url: str, storage_options: dict[str, Any]) -> int:
    """Upload j4r's default training photos when ``content_url`` holds none; returns count."""
    from pipeline.io.storage import open_location
    from pipeline.registry.content import list_images, upload_training_content

    present = len(list_images(open_location(content_url, storage_options)))
    if present:
        get_run_logger().info("%d training photos already under %s", present, content_url)
        return present
    uploaded = upload_training_content(content_url, storage_options)
    get_run_logger().info("uploaded %d training photos to %s", len(uploaded), content_url)
    return len(uploaded)


def _train_values(preset: str, steps: int | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig values: ``steps`` splits into the stages in the preset's proportion."""
    from j4r.config import to_dict, train_config

    values = {**to_dict(train_config(preset)), **overrides}
    if steps is not None:
        stage1, stage2 = values["stage1_steps"], values["stage2_steps"]
        values["stage1_steps"] = max(1, round(steps * stage1 / max(1, stage1 + stage2)))
        values["stage2_steps"] = max(0, steps - values["stage1_steps"])
    return to_dict(train_config(preset, **values))  # validates the keys


@task(name="train-on-ray")
def train_model(
    *,
    preset: str,
    steps: int | None,
    train_overrides: dict[str, Any],
    version: str,
    content_url: str | None,
    storage_path: str,
    run_name: str,
    storage_options: dict[str, Any],
    num_workers: int,
    use_gpu: bool,
    threads_per_worker: int,
    checkpoint_every: int,
    max_failures: int,
    ray_address: str | None,
) -> Path:
    """Fit (or continue) the Ray Train run; returns the exported checkpoint folder.

    No task retries: Ray Train restarts lost workers from the last checkpoint
    (``max_failures``), and running the flow again with the same ``run_name`` resumes.
    """
    from j4r.config import net_config, to_dict
    from pipeline.errors import RunnerError
    from pipeline.runtime.ray_connect import connect
    from pipeline.runtime.ray_train import RayTrainJob, train_on_ray

    connect(ray_address, num_cpus=None if ray_address else num_workers * threads_per_worker)
    job = RayTrainJob(
        net=to_dict(net_config(preset)),
        train=_train_values(preset, steps, train_overrides),
        preset=preset,
        version=version,
        content_url=content_url,
        storage_options=storage_options,
        checkpoint_every=checkpoint_every,
        threads_per_worker=threads_per_worker,
    )
    result = train_on_ray(
        job,
        storage_path=storage_path,
        name=run_name,
        num_workers=num_workers,
        use_gpu=use_gpu,
        max_failures=max_failures,
        storage_options=storage_options,
        output_dir=Path(tempfile.mkdtemp(prefix=f"train-j4r-{run_name}-")),
    )
    if result.final is None:
        raise RunnerError(f"run {run_name} stopped at step {result.steps} without a final model")
    get_run_logger().info("trained %s: %d steps -> %s", run_name, result.steps, result.final)
    return result.final


@task(name="evaluate-checkpoint")
def evaluate_model(checkpoint: Path, frames: int, crop: int) -> dict[str, float]:
    """Writes eval.json and eval.md into the checkpoint (they are published with it).

    Returns J4R-Net's PSNR/SSIM on luma per test set: ``{"light_psnr_y": dB, ...}``.
    """
    from pipeline.tools.evaluation import evaluate_checkpoint, luma_scores, write_evaluation

    record, table = evaluate_checkpoint(checkpoint, frames=frames, crop=crop)
    write_evaluation(record, table, checkpoint)
    get_run_logger().info("evaluation of %s:\n%s", checkpoint, table)
    return luma_scores(record)


@task(name="publish-model", **STORAGE_RETRIES)
def publish(
    checkpoint: Path,
    registry_url: str,
    storage_options: dict[str, Any],
    version: str,
    set_latest: bool,
) -> str:
    from pipeline.registry.models import publish_model

    return publish_model(
        checkpoint, registry_url, storage_options, version=version, set_latest=set_latest
    )


@flow(name="train-j4r")
def train_j4r(
    registry_url: str | None = None,
    storage_path: str | None = None,
    content_url: str | None = None,
    preset: str = "small",
    steps: int | None = None,
    train_overrides: dict[str, Any] | None = None,
    num_workers: int = 2,
    use_gpu: bool = False,
    threads_per_worker: int = 1,
    ray_address: str | None = None,
    run_name: str | None = None,
    version: str | None = None,
    storage_options: dict[str, Any] | None = None,
    upload_content: bool = True,
    checkpoint_every: int = 100,
    max_failures: int = 2,
    evaluate: bool = True,
    eval_frames: int = 8,
    eval_crop: int = 96,
    set_latest: bool = True,
) -> str:
    """Train a J4R-Net on Ray Train, evaluate it and publish it; returns the new version.

    ``registry_url`` and ``storage_path`` (training checkpoints) and ``content_url`` (clean
    photos; None: each worker's installed ones), when not given, come from the Prefect
    Variables ``derain_models``, ``derain_checkpoints``, ``derain_content`` (else the worker's
    ``DERAIN_MODELS``, ``DERAIN_CHECKPOINTS``, ``DERAIN_CONTENT``). They share
    ``storage_options`` (e.g. ``{"endpoint_url": ...}``). ``steps`` overrides the preset's
    total, split between the two stages in the preset's proportion; ``train_overrides`` sets
    other TrainConfig keys.
    ``version`` defaults to the UTC time (``2026.12.01-0230``); ``run_name`` to
    ``j4r-PRESET-VERSION``. ``ray_address``: ``auto`` or ``ray://HOST:10001``; None starts a
    local Ray with ``num_workers x threads_per_worker`` CPUs. Prefect records parameters:
    keep credentials out of ``storage_options`` (use the AWS chain: environment, role).
    """
    registry_url = configured("model_registry", registry_url)
    storage_path = configured("storage_path", storage_path)
    content_url = configured("content_url", content_url, required=False)
    options = storage_options or {}
    version = version or dt.datetime.now(dt.UTC).strftime("%Y.%m.%d-%H%M")
    run_name = run_name or f"j4r-{preset}-{version}"
    if content_url and upload_content:
        ensure_content(content_url, options)
    checkpoint = train_model(
        preset=preset,
        steps=steps,
        train_overrides=train_overrides or {},
        version=version,
        content_url=content_url,
        storage_path=storage_path,
        run_name=run_name,
        storage_options=options,
        num_workers=num_workers,
        use_gpu=use_gpu,
        threads_per_worker=threads_per_worker,
        checkpoint_every=checkpoint_every,
        max_failures=max_failures,
        ray_address=ray_address,
    )
    if evaluate:
        evaluate_model(checkpoint, eval_frames, eval_crop)
    return publish(checkpoint, registry_url, options, version, set_latest)
