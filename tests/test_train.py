"""Losses, schedule and the resumable two-stage loop (tiny preset, CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from j4r.checkpoint import load_checkpoint
from j4r.config import ClipConfig, net_config, train_config
from j4r.data import ClipSampler
from j4r.losses import high_pass
from j4r.model import build_model
from j4r.sources import CleanSource, package_dir, read_image_rgb
from j4r.train import learning_rate, make_optimizer, train


@pytest.fixture(scope="module")
def sampler():
    image = read_image_rgb(package_dir("skimage") / "data" / "brick.png")
    return ClipSampler([CleanSource("brick", image)], ClipConfig(frames=3, size=16))


def test_high_pass_removes_flat_and_keeps_edges():
    flat = torch.full((1, 1, 12, 12), 0.4)
    assert high_pass(flat).abs().max() < 1e-6
    edge = torch.zeros(1, 1, 12, 12)
    edge[..., 6:] = 1
    assert high_pass(edge).abs().max() > 0.1


def test_learning_rate_decays_from_1e3_to_1e5_in_each_stage():
    config = train_config("small", stage1_steps=100, stage2_steps=50)
    assert learning_rate(0, config) == pytest.approx(1e-3)
    assert learning_rate(99, config) == pytest.approx(1e-5)
    assert learning_rate(100, config) == pytest.approx(1e-3)
    assert learning_rate(149, config) == pytest.approx(1e-5)


def test_stage2_trains_the_trunk_100x_slower():
    model = build_model(net_config("tiny"))
    config = train_config("tiny")
    stage1 = make_optimizer(model, 1, config)
    stage1_params = {id(p) for g in stage1.param_groups for p in g["params"]}
    assert id(model.rnet.streak.weight) in stage1_params
    assert id(model.fnet.gates.weight) not in stage1_params  # single-frame path only
    stage2 = make_optimizer(model, 2, config)
    scales = {g["lr_scale"] for g in stage2.param_groups}
    assert scales == {0.01, 1.0}


def weights(folder):
    return load_checkpoint(folder)[0].state_dict()


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(tmp_path, sampler):
    net = net_config("tiny")
    config = train_config("tiny", stage1_steps=3, stage2_steps=3, checkpoint_every_s=1e9)
    whole = train(tmp_path / "whole", net=net, config=config, sampler=sampler, progress=False)
    assert whole.finished
    paused = train(
        tmp_path / "split", net=net, config=config, sampler=sampler, progress=False, stop_after=4
    )  # pauses inside stage 2
    assert not paused.finished and paused.steps == 4
    assert not paused.final.exists()
    resumed = train(tmp_path / "split", net=net, config=config, sampler=sampler, progress=False)
    assert resumed.finished
    a, b = weights(whole.final), weights(resumed.final)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    # Stage 2 changed the network after the stage-1 export.
    stage1 = weights(whole.stage1)
    assert not torch.equal(stage1["fnet.gates.weight"], a["fnet.gates.weight"])
    log = [json.loads(line) for line in (tmp_path / "whole" / "train_log.jsonl").open()]
    assert [e["step"] for e in log] == list(range(6))
    assert {e["stage"] for e in log} == {1, 2}
    assert all(e["detect"] > 0 for e in log if e["stage"] == 2)


@pytest.mark.slow
def test_a_few_steps_reduce_the_loss(tmp_path, sampler):
    """Stage 1 learns: the loss on a held-out batch drops after 40 steps."""
    from j4r.losses import single_frame_loss

    torch.manual_seed(0)
    model = build_model(net_config("tiny"))
    config = train_config("tiny", stage1_steps=40, stage2_steps=0, batch_size=8, lr_end=1e-3)
    fixed = sampler.batch(seed=99, step=0, batch_size=8, frames=1)

    def loss() -> float:
        with torch.no_grad():
            free, streaks = model.single_frame(fixed.rainy[:, 0])
            return float(
                single_frame_loss(
                    free,
                    streaks,
                    clean=fixed.clean[:, 0],
                    streaks=fixed.streaks[:, 0],
                    config=config,
                ).joint
            )

    from j4r.train import sample_batch, train_step

    before = loss()
    optimizer = make_optimizer(model, 1, config)
    for step in range(40):
        train_step(model, optimizer, sample_batch(sampler, step, config), step=step, config=config)
    assert loss() < 0.9 * before
