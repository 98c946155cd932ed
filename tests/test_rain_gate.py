"""The rain gate: a closed gate leaves the picture exactly as it was, fine-tuning can add one
to a checkpoint without it, and its training target marks what the rain touched."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from j4r.checkpoint import save_checkpoint
from j4r.config import net_config, train_config
from j4r.losses import rain_touched
from j4r.model import build_model
from j4r.train import initialise_from, make_optimizer


def clip(seed=1, t=4, h=17, w=21):
    return torch.rand(1, t, 1, h, w, generator=torch.Generator().manual_seed(seed))


def gated_tiny():
    torch.manual_seed(0)
    return build_model(net_config("tiny", rain_gate=True)).eval()


@torch.no_grad()
def test_a_closed_gate_returns_the_input_bit_for_bit():
    model = gated_tiny()
    model.gate.logits.bias.fill_(-200.0)
    model.gate.logits.weight.zero_()
    x = clip()
    out, _ = model(x)
    assert torch.equal(out.background, x)


@torch.no_grad()
def test_the_gate_scales_the_change_the_network_would_make():
    model = gated_tiny()
    x = clip()
    gated, _ = model(x)
    model.gate.logits.bias.fill_(200.0)
    opened, _ = model(x)
    share = torch.sigmoid(gated.gate_logits)
    torch.testing.assert_close(gated.background - x, share * (opened.background - x))
    assert 0.9 < float(share.mean()) < 0.99  # starts nearly open: σ(3)


@torch.no_grad()
def test_networks_without_a_gate_report_it_open():
    model = build_model(net_config("tiny")).eval()
    out, _ = model(clip())
    assert torch.equal(torch.sigmoid(out.gate_logits), torch.ones_like(out.gate_logits))


def test_fine_tuning_adds_a_gate_to_a_checkpoint_without_one(tmp_path):
    torch.manual_seed(3)
    plain_net = net_config("tiny")
    plain = build_model(plain_net)
    save_checkpoint(plain, tmp_path / "ck", name="j4r-tiny", version="t", net=plain_net)
    gated_net = dataclasses.replace(plain_net, rain_gate=True)
    model = build_model(gated_net)
    initialise_from(model, tmp_path / "ck", gated_net)
    for key, value in plain.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # How the output becomes RGB is no weight: it follows the new run's config either way.
    filling = dataclasses.replace(gated_net, chroma_fill=True)
    initialise_from(build_model(filling), tmp_path / "ck", filling)
    # The reverse (dropping a trained gate) and other size changes are refused.
    with pytest.raises(ValueError, match="differs"):
        initialise_from(build_model(net_config("small")), tmp_path / "ck", net_config("small"))
    groups = make_optimizer(model, 2, train_config("tiny", gate_lr_scale=5.0)).param_groups
    assert [g["lr_scale"] for g in groups] == [0.01, 1.0, 5.0]
    assert groups[2]["params"] == list(model.gate.parameters())


def test_the_gate_target_marks_rain_and_nothing_on_a_dry_clip():
    clean = torch.rand(2, 3, 1, 16, 16)
    assert rain_touched(clean, clean, threshold=0.01).sum() == 0
    rainy = clean.clone()
    rainy[0, 1, 0, 8, 8] += 0.2  # one drop
    touched = rain_touched(rainy, clean, threshold=0.01)
    assert touched[0, 1, 0, 7:10, 7:10].eq(1).all()  # grown by one pixel
    assert touched.sum() == 9


def test_float_settings_accept_yaml_exponents():
    # YAML 1.1 reads "2e-4" as a string; `--set lr_start=2e-4` must still mean a number.
    assert train_config("tiny", lr_start="2e-4").lr_start == pytest.approx(2e-4)
    with pytest.raises(ValueError, match="not a number"):
        train_config("tiny", lr_start="fast")


def test_a_training_step_teaches_a_gated_network_where_the_rain_is(tmp_path):
    from j4r.config import ClipConfig
    from j4r.data import ClipSampler
    from j4r.sources import CleanSource, package_dir, read_image_rgb
    from j4r.train import train_step

    image = read_image_rgb(package_dir("skimage") / "data" / "brick.png")
    sampler = ClipSampler([CleanSource("brick", image)], ClipConfig(frames=3, size=16))
    config = train_config("tiny", stage1_steps=0, stage2_steps=8, gate_lr_scale=20.0)
    model = gated_tiny().train()
    optimizer = make_optimizer(model, 2, config)
    batch = sampler.batch(seed=0, step=0, batch_size=2)
    first = train_step(model, optimizer, batch, step=0, config=config)
    for step in range(1, 8):
        last = train_step(model, optimizer, batch, step=step, config=config)
    assert first["gate"] > 0.5  # starts open on pixels the rain never touched
    assert last["gate"] < first["gate"]
