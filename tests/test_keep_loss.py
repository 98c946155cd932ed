"""The keep loss: the change on pixels rain did not touch, averaged over those pixels alone."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from j4r.arch import ClipOutput
from j4r.config import train_config
from j4r.losses import j4r_loss, keep_loss, rain_touched


def outputs(background: torch.Tensor) -> ClipOutput:
    b, t, _, h, w = background.shape
    zeros = torch.zeros_like(background)
    return ClipOutput(
        background=background,
        streaks=zeros,
        alpha_logits=torch.zeros(b, t, 2, h, w),
        detail=zeros,
        gate_logits=zeros,
        presence_logits=torch.zeros(b, t, 1),
        local_background=background,
        veil_logits=torch.zeros(b, t, 0),
    )


def test_only_untouched_pixels_count_and_they_are_averaged_alone():
    clean = torch.rand(1, 2, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    untouched = torch.ones_like(clean)
    untouched[0, 0, 0, :, :8] = 0  # a downpour: 80 of the first frame's 100 pixels are rain
    changed = clean.clone()
    changed[0, 0, 0, :, :8] += 0.5  # changes under the rain are the joint loss's business
    assert keep_loss(changed, clean, untouched) == 0
    changed[0, 0, 0, 0, 9] += 0.3  # one dry pixel between the streaks
    assert keep_loss(changed, clean, untouched).item() == pytest.approx(0.09 / 120)
    # the plain mean over every pixel (l_joint, were the rain removed exactly) gives it 0.6x
    exact_under_rain = torch.where(untouched.bool(), changed, clean)
    plain = torch.nn.functional.mse_loss(exact_under_rain, clean).item()
    assert plain == pytest.approx(0.6 * keep_loss(changed, clean, untouched).item())


def test_on_a_dry_clip_it_is_the_joint_loss():
    clean = torch.rand(2, 3, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    background = clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    untouched = 1 - rain_touched(clean, clean, threshold=0.01)
    assert keep_loss(background, clean, untouched).item() == pytest.approx(
        torch.nn.functional.mse_loss(background, clean).item()
    )


def test_lambda_keep_adds_the_term_and_zero_leaves_the_loss_as_before():
    gen = torch.Generator().manual_seed(3)
    clean = torch.rand(1, 3, 1, 12, 12, generator=gen)
    rainy = clean.clone()
    rainy[..., 2:4, :] += 0.4  # rain on two rows of every frame
    background = clean + 0.02 * torch.randn(clean.shape, generator=gen)
    alpha = torch.zeros_like(clean)
    base = train_config("tiny")
    off = j4r_loss(
        outputs(background),
        clean=clean,
        streaks=rainy - clean,
        alpha=alpha,
        config=base,
        rainy=rainy,
        gated=False,
    )
    on = j4r_loss(
        outputs(background),
        clean=clean,
        streaks=rainy - clean,
        alpha=alpha,
        config=dataclasses.replace(base, lambda_keep=5.0),
        rainy=rainy,
        gated=False,
    )
    assert base.lambda_keep == 0 and off.keep == 0
    untouched = 1 - rain_touched(rainy, clean, threshold=base.gate_threshold)
    assert on.keep.item() == pytest.approx(keep_loss(background, clean, untouched).item())
    assert (on.total - off.total).item() == pytest.approx(5.0 * on.keep.item(), rel=1e-5)
    assert on.joint == off.joint


def test_the_charbonnier_joint_loss_pulls_like_mse_at_six_levels_and_harder_below():
    from j4r.losses import joint_error

    clean = torch.zeros(1, 1, 1, 1, 2)
    grads = {}
    for kind in ("mse", "charbonnier"):
        for error in (0.025, 0.005):
            background = torch.tensor([[[[[error, 0.0]]]]], requires_grad=True)
            joint_error(background, clean, kind).backward()
            grads[kind, error] = float(background.grad[0, 0, 0, 0, 0])
    assert grads["charbonnier", 0.025] == pytest.approx(grads["mse", 0.025], rel=0.01)
    # A faint streak left behind (about one level) is pulled 4x harder than MSE pulls it.
    assert grads["charbonnier", 0.005] > 4 * grads["mse", 0.005]
    with pytest.raises(ValueError, match="joint_loss"):
        train_config("tiny", joint_loss="l3")


def test_the_psnr_joint_loss_weighs_each_frame_by_its_decibels():
    from j4r.losses import PSNR_FLOOR_MSE, PSNR_REFERENCE_MSE, joint_error

    # Two frames of one clip, (b, t, c, h, w): one at 30 dB, one at 40 dB (faint rain left).
    clean = torch.zeros(1, 2, 1, 4, 4)
    errors = torch.tensor([PSNR_REFERENCE_MSE**0.5, 0.01]).view(1, 2, 1, 1, 1)
    grads = {}
    for kind in ("mse", "psnr"):
        background = (clean + errors).requires_grad_(True)
        joint_error(background, clean, kind).backward()
        grads[kind] = background.grad[0, :, 0, 0, 0]
    floor = PSNR_REFERENCE_MSE / (PSNR_REFERENCE_MSE + PSNR_FLOOR_MSE)
    # At 30 dB it pulls as MSE does; at 40 dB ten times harder than MSE, where MSE pulls the
    # faint frame's pixels about a third as hard as the 30 dB frame's.
    assert float(grads["psnr"][0]) == pytest.approx(floor * float(grads["mse"][0]), rel=1e-4)
    ratio = float(grads["psnr"][1] / grads["mse"][1])
    assert ratio == pytest.approx(PSNR_REFERENCE_MSE / (1e-4 + PSNR_FLOOR_MSE), rel=1e-4)
    assert ratio > 9
    # Its value is the mean of the frames' log MSE, scaled: a frame left perfect is bounded.
    perfect = joint_error(clean, clean, "psnr")
    assert float(perfect) == pytest.approx(PSNR_REFERENCE_MSE * math.log(PSNR_FLOOR_MSE))


def test_rain_strength_weights_lift_faint_rain_and_leave_dry_frames_alone():
    from j4r.losses import rain_strength_weights

    # Three frames: dry, faint rain (40 dB), heavy rain (14 dB); the output leaves each frame's
    # rain as it came.
    clean = torch.rand(1, 3, 1, 8, 8)
    rainy = clean.clone()
    rainy[0, 1] += 0.01
    rainy[0, 2] += 0.2
    lifted = rain_strength_weights(rainy, clean, weight_range=(1.0, 10.0)).flatten()
    assert lifted.tolist() == pytest.approx([1.0, 10.0, 1.0])
    both = rain_strength_weights(rainy, clean, weight_range=(0.1, 4.0)).flatten()
    assert both.tolist() == pytest.approx([1.0, 4.0, 0.1])
    base = train_config("tiny")
    common = dict(clean=clean, streaks=rainy - clean, alpha=torch.zeros_like(clean))
    plain = j4r_loss(outputs(rainy), **common, config=base, rainy=rainy, gated=False)
    weighted = j4r_loss(
        outputs(rainy),
        **common,
        config=dataclasses.replace(base, rain_weight_range=(0.1, 4.0)),
        rainy=rainy,
        gated=False,
    )
    error = (rainy - clean).pow(2).mean(dim=(-3, -2, -1)).flatten()
    expected = (error * torch.tensor([1.0, 4.0, 0.1])).mean()
    assert weighted.joint.item() == pytest.approx(expected.item(), rel=1e-5)
    assert plain.joint.item() == pytest.approx(error.mean().item(), rel=1e-5)
    # Kept to the plain MSE's scale: the same value, the gradient split between frames as the
    # weights say (here the output is the rainy input, so d/dB of frame f is 2 w_f (O - B) / n).
    background = rainy.clone().requires_grad_(True)
    scaled = j4r_loss(
        outputs(background),
        **common,
        config=dataclasses.replace(base, rain_weight_range=(0.1, 4.0), rain_weight_keep_scale=True),
        rainy=rainy,
        gated=False,
    )
    assert scaled.joint.item() == pytest.approx(plain.joint.item(), rel=1e-5)
    scaled.joint.backward()
    pull = background.grad.abs().sum(dim=(-3, -2, -1)).flatten()
    unweighted = (rainy - clean).abs().sum(dim=(-3, -2, -1)).flatten()
    ratio = (pull[1:] / unweighted[1:]).tolist()
    assert ratio[0] / ratio[1] == pytest.approx(40.0, rel=1e-4)  # weights 4 and 0.1
    with pytest.raises(ValueError, match="rain_weight_keep_scale"):
        train_config("tiny", rain_weight_keep_scale=True)
    with pytest.raises(ValueError, match="rain_weight_range"):
        train_config("tiny", rain_weight_range=(2.0, 10.0))
    with pytest.raises(ValueError, match="joint_loss=mse"):
        train_config("tiny", rain_weight_range=(0.5, 2.0), joint_loss="psnr")
