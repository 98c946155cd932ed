"""Ray Train (CPU, 2 DDP workers, gloo) with checkpoints and content on S3; the train-j4r flow.

One paused run plus its resumption serve several tests (a fit costs ~10-20 s on 2 cores).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STAGE1_STEPS, STAGE2_STEPS = 2, 2


@pytest.fixture(scope="module")
def bucket(s3_endpoint):
    """A bucket with two small clean photos under content/ (what workers train on)."""
    import s3fs

    from j4r.sources import training_photo_paths

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    name = "ray-train-tests"
    fs.mkdir(name)
    for path in (p for p in training_photo_paths() if p.name in ("camera.png", "coffee.png")):
        fs.put_file(str(path), f"{name}/content/{path.name}")
    return fs, name, {"endpoint_url": s3_endpoint}


@pytest.fixture(scope="module")
def paused_then_resumed(ray_session, bucket, tmp_path_factory):
    """A run paused at the end of stage 1, then a new fit() of the same run to the end."""
    from j4r.config import net_config, to_dict, train_config
    from pipeline.runtime.ray_train import RayTrainJob, train_on_ray

    _, name, options = bucket
    config = train_config("tiny", stage1_steps=STAGE1_STEPS, stage2_steps=STAGE2_STEPS)
    job = RayTrainJob(
        net=to_dict(net_config("tiny")),
        train=to_dict(config),
        preset="tiny",
        version="ray-test",
        content_url=f"s3://{name}/content",
        storage_options=options,
        checkpoint_every=100,  # a checkpoint only where a fit stops
        pause_at_step=STAGE1_STEPS,
    )
    kwargs = {"storage_path": f"s3://{name}/checkpoints", "name": "resumable", "num_workers": 2}
    kwargs["storage_options"] = options
    paused = train_on_ray(job, **kwargs, output_dir=tmp_path_factory.mktemp("paused"))
    resumed = train_on_ray(
        replace(job, pause_at_step=None), **kwargs, output_dir=tmp_path_factory.mktemp("resumed")
    )
    return paused, resumed


def test_ranks_draw_different_batches():
    """So that equal weights across ranks below come from DDP, not from equal data."""
    import torch

    from j4r.config import train_config
    from j4r.data import ClipSampler
    from j4r.sources import CleanSource, read_image_rgb, training_photo_paths
    from j4r.train import sample_batch

    config = train_config("tiny")
    photos = [CleanSource(p.name, read_image_rgb(p, 128)) for p in training_photo_paths()[:2]]
    sampler = ClipSampler(photos, config.clip)
    rank0, rank1 = (sample_batch(sampler, 0, config, rank).rainy for rank in (0, 1))
    assert not torch.equal(rank0, rank1)


def test_ddp_ranks_hold_identical_weights_in_both_stages(paused_then_resumed):
    paused, resumed = paused_then_resumed
    assert paused.metrics["stage"] == 1 and resumed.metrics["stage"] == 2
    for result in (paused, resumed):
        digests = result.metrics["weights_digests"]
        assert len(digests) == 2 and digests[0] == digests[1]
    assert paused.metrics["weights_digests"] != resumed.metrics["weights_digests"]


def test_a_new_fit_of_the_same_run_continues_from_its_checkpoint(paused_then_resumed, bucket):
    paused, resumed = paused_then_resumed
    assert (paused.steps, paused.finished, paused.final) == (STAGE1_STEPS, False, None)
    assert paused.metrics["start_step"] == 0
    assert resumed.metrics["start_step"] == STAGE1_STEPS  # not restarted from 0
    assert (resumed.steps, resumed.finished) == (STAGE1_STEPS + STAGE2_STEPS, True)
    fs, name, _ = bucket
    fs.invalidate_cache()
    entries = fs.ls(f"{name}/checkpoints/resumable", detail=True)
    stored = [e for e in entries if e["type"] == "directory" and "/checkpoint_" in e["name"]]
    assert len(stored) == 2  # CheckpointConfig(num_to_keep=2)


def test_the_final_checkpoint_is_an_exported_j4r_checkpoint(paused_then_resumed):
    from j4r.checkpoint import load_checkpoint

    _, resumed = paused_then_resumed
    _, info = load_checkpoint(resumed.final)
    assert info.version == "ray-test"
    assert info.extra["training"]["workers"] == 2
    assert info.extra["training"]["steps"] == STAGE1_STEPS + STAGE2_STEPS
    assert info.extra["training"]["preset"] == "tiny"
    _, stage1 = load_checkpoint(resumed.final / "stage1")
    assert stage1.version == "ray-test-stage1" and stage1.sha256 != info.sha256


def test_train_j4r_flow_publishes_a_new_latest_version(prefect_harness, ray_session, bucket):
    from flows.train import train_j4r
    from pipeline.registry.models import resolve_model

    fs, name, options = bucket
    version = train_j4r(
        registry_url=f"s3://{name}/models",
        storage_path=f"s3://{name}/flow-checkpoints",
        content_url=f"s3://{name}/content",
        preset="tiny",
        steps=2,
        num_workers=2,
        version="2026.12.01-test",
        storage_options=options,
        checkpoint_every=100,  # a checkpoint only where a fit stops
        eval_frames=2,
        eval_crop=32,
    )
    assert version == "2026.12.01-test"
    fs.invalidate_cache()
    published = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{name}/models/j4r/{version}")}
    assert {"model.safetensors", "config.json", "eval.json", "eval.md", "stage1"} <= published
    latest = json.loads(fs.cat_file(f"{name}/models/j4r/latest.json"))
    assert latest["version"] == version
    folder = resolve_model(f"s3://{name}/models", options=options)
    config = json.loads((folder / "config.json").read_text())
    assert config["sha256"] == latest["sha256"]
    assert config["training"]["train"]["stage1_steps"] == 1  # steps=2 split 1 + 1
    evaluation = json.loads((folder / "eval.json").read_text())
    assert evaluation["model"]["sha256"] == latest["sha256"]
