"""The paper's objective: ``l_all = l_joint + λd l_detect + λc l_rect + λr l_removal``."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn import functional as F

from j4r.arch import ClipOutput
from j4r.config import TrainConfig

_BLUR_TAPS = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def high_pass(images: torch.Tensor) -> torch.Tensor:
    """``E(x) = x − blur(x)`` with a 5x5 binomial blur; any leading dims, last two are (h, w)."""
    shape = images.shape
    flat = images.reshape(-1, 1, *shape[-2:])
    taps = _BLUR_TAPS.to(images)
    padded = F.pad(flat, (2, 2, 2, 2), mode="replicate")
    blurred = F.conv2d(F.conv2d(padded, taps.view(1, 1, 1, 5)), taps.view(1, 1, 5, 1))
    return (flat - blurred).reshape(shape)


def rain_touched(rainy: torch.Tensor, clean: torch.Tensor, *, threshold: float) -> torch.Tensor:
    """The rain gate's target: 1 where rain changed the picture by more than ``threshold``
    (luma), grown by one pixel so streak edges count; 0 everywhere on a dry clip.
    ``(..., 1, h, w)`` in, same shape out, float in {0, 1}."""
    shape = rainy.shape
    changed = ((rainy - clean).abs() > threshold).reshape(-1, 1, *shape[-2:]).float()
    return F.max_pool2d(changed, kernel_size=3, stride=1, padding=1).reshape(shape)


def rain_present(rainy: torch.Tensor, clean: torch.Tensor, *, threshold_db: float) -> torch.Tensor:
    """The presence head's target per frame: 1 where the rain costs more than
    ``threshold_db`` of PSNR (luma). ``(b, t, 1, h, w)`` -> ``(b, t, 1)`` in {0, 1}."""
    mse = (rainy - clean).pow(2).mean(dim=(-2, -1))
    return (mse > 10 ** (-threshold_db / 10)).float()


def keep_loss(
    background: torch.Tensor, clean: torch.Tensor, untouched: torch.Tensor
) -> torch.Tensor:
    """Mean squared change ``(B̂ − B)²`` over the pixels rain did not touch (``untouched`` = 1)
    only. ``l_joint`` averages over every pixel, so in a downpour the few dry pixels between
    the streaks weigh almost nothing, and a net can learn to change fine bright texture there
    for free; averaged over those pixels alone they weigh as much as a whole dry frame."""
    weight = untouched.expand_as(background)
    return ((background - clean).pow(2) * weight).sum() / weight.sum().clamp_min(1.0)


CHARBONNIER_EPS = 1e-3
# Scaled so that its gradient equals the squared error's at an error of 0.025 (about 6 8-bit
# levels): there the other terms keep the weight they have against the paper's joint term.
CHARBONNIER_SCALE = 0.05
# The PSNR loss: each frame's log MSE, scaled so that a frame at 30 dB pulls as the mean squared
# error pulls it; a frame at 40 dB (faint rain) ten times harder, one at 20 dB (a downpour) a
# tenth as hard. The floor (50 dB) bounds the pull on a frame that is already nearly right.
PSNR_REFERENCE_MSE = 1e-3
PSNR_FLOOR_MSE = 1e-5


def joint_error(background: torch.Tensor, clean: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """``l_joint``: the mean squared error (the paper's); a scaled Charbonnier error
    ``s · mean(sqrt(e² + ε²))``, a smooth L1 that pulls as hard on a faint streak left behind
    as on a bold one; or ``psnr``, ``r · mean over frames of ln(MSE_frame + ε)``.

    MSE averaged over a batch is set by its rainiest frames: a frame of faint rain, whose
    streaks cost a few dB, adds almost nothing to it, so a network may leave faint rain for
    free. The PSNR loss weighs every frame by its decibels, as the evaluation does. Frames are
    the last three dims ``(c, h, w)``; any leading dims."""
    if kind == "mse":
        return F.mse_loss(background, clean)
    if kind == "charbonnier":
        error = (background - clean).pow(2) + CHARBONNIER_EPS**2
        return CHARBONNIER_SCALE * error.sqrt().mean()
    if kind == "psnr":
        frame_mse = (background.float() - clean.float()).pow(2).mean(dim=(-3, -2, -1))
        return PSNR_REFERENCE_MSE * torch.log(frame_mse + PSNR_FLOOR_MSE).mean()
    raise ValueError(f"unknown joint loss {kind!r}")


# Rain-strength weighting: a frame whose rain costs 30 dB of PSNR (this mean squared change)
# keeps the joint term's weight; fainter rain counts more, heavier less, within a range.
RAIN_REFERENCE_MSE = 1e-3


def rain_strength_weights(
    rainy: torch.Tensor, clean: torch.Tensor, *, weight_range: tuple[float, float]
) -> torch.Tensor:
    """Per-frame weights ``(..., 1, 1, 1)`` for the joint term: ``R / MSE(O, B)`` clamped to
    ``weight_range`` on frames with rain, 1 on dry frames (left to the keep loss). Faint rain
    changes a frame little, so under plain MSE a net pays almost nothing for leaving it; with
    the range ``(0, inf)`` every rainy frame counts by its decibels, as the evaluation does."""
    rain_mse = (rainy.float() - clean.float()).pow(2).mean(dim=(-3, -2, -1), keepdim=True)
    weights = (RAIN_REFERENCE_MSE / rain_mse.clamp_min(1e-12)).clamp(*weight_range)
    return torch.where(rain_mse > 0, weights, torch.ones_like(weights))


class LossTerms(NamedTuple):
    total: torch.Tensor
    joint: torch.Tensor
    detect: torch.Tensor
    rect: torch.Tensor
    removal: torch.Tensor
    gate: torch.Tensor
    presence: torch.Tensor
    keep: torch.Tensor


def j4r_loss(
    out: ClipOutput,
    *,
    clean: torch.Tensor,
    streaks: torch.Tensor,
    alpha: torch.Tensor,
    config: TrainConfig,
    rainy: torch.Tensor | None = None,
    gated: bool = True,
    present: bool = False,
) -> LossTerms:
    """Full-network loss on a clip; tensors ``(b, t, c, h, w)``, ``alpha`` in {0, 1}.

    With ``rainy`` the rain gate's logits (networks that have one, ``gated``) learn the mask
    of pixels the rain touched, weighted by ``λg``, and the presence head's logits (``present``)
    whether a frame has rain at all, weighted by ``λp``: binary cross-entropies; and with
    ``λk`` > 0 the change on pixels the rain did not touch is paid for again (:func:`keep_loss`).
    """
    if tuple(config.rain_weight_range) != (1.0, 1.0) and rainy is not None:
        weights = rain_strength_weights(rainy, clean, weight_range=config.rain_weight_range)
        squared = (out.background - clean).pow(2)
        joint = (squared * weights).mean()
        if config.rain_weight_keep_scale:
            joint = joint * (squared.mean() / joint.clamp_min(1e-12)).detach()
    else:
        joint = joint_error(out.background, clean, config.joint_loss)
    logits = out.alpha_logits.flatten(0, 1)
    detect = F.cross_entropy(logits, alpha.flatten(0, 1)[:, 0].long())
    rect = F.mse_loss(high_pass(out.background), high_pass(clean))
    removal = F.mse_loss(out.streaks, streaks)
    gate = presence = keep = joint.new_zeros(())
    touched = None
    if rainy is not None and (gated or config.lambda_keep > 0):
        touched = rain_touched(rainy, clean, threshold=config.gate_threshold)
    if touched is not None and gated:
        gate = F.binary_cross_entropy_with_logits(out.gate_logits, touched)
    if touched is not None and config.lambda_keep > 0:
        keep = keep_loss(out.background, clean, 1.0 - touched)
    if rainy is not None and present:
        target = rain_present(rainy, clean, threshold_db=config.presence_threshold_db)
        presence = F.binary_cross_entropy_with_logits(out.presence_logits, target)
    total = (
        joint
        + config.lambda_detect * detect
        + config.lambda_rect * rect
        + config.lambda_removal * removal
        + config.lambda_gate * gate
        + config.lambda_presence * presence
        + config.lambda_keep * keep
    )
    return LossTerms(total, joint, detect, rect, removal, gate, presence, keep)


def single_frame_loss(
    streak_free: torch.Tensor,
    predicted_streaks: torch.Tensor,
    *,
    clean: torch.Tensor,
    streaks: torch.Tensor,
    config: TrainConfig,
) -> LossTerms:
    """Stage-1 loss of the single-frame path: ``‖(O − Ŝ) − b‖² + λr ‖Ŝ − s‖²``."""
    joint = joint_error(streak_free, clean, config.joint_loss)
    removal = F.mse_loss(predicted_streaks, streaks)
    zero = joint.new_zeros(())
    total = joint + config.lambda_removal * removal
    return LossTerms(total, joint, zero, zero, removal, zero, zero, zero)
