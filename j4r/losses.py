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


class LossTerms(NamedTuple):
    total: torch.Tensor
    joint: torch.Tensor
    detect: torch.Tensor
    rect: torch.Tensor
    removal: torch.Tensor


def j4r_loss(
    out: ClipOutput,
    *,
    clean: torch.Tensor,
    streaks: torch.Tensor,
    alpha: torch.Tensor,
    config: TrainConfig,
) -> LossTerms:
    """Full-network loss on a clip; tensors ``(b, t, c, h, w)``, ``alpha`` in {0, 1}."""
    joint = F.mse_loss(out.background, clean)
    logits = out.alpha_logits.flatten(0, 1)
    detect = F.cross_entropy(logits, alpha.flatten(0, 1)[:, 0].long())
    rect = F.mse_loss(high_pass(out.background), high_pass(clean))
    removal = F.mse_loss(out.streaks, streaks)
    total = (
        joint
        + config.lambda_detect * detect
        + config.lambda_rect * rect
        + config.lambda_removal * removal
    )
    return LossTerms(total, joint, detect, rect, removal)


def single_frame_loss(
    streak_free: torch.Tensor,
    predicted_streaks: torch.Tensor,
    *,
    clean: torch.Tensor,
    streaks: torch.Tensor,
    config: TrainConfig,
) -> LossTerms:
    """Stage-1 loss of the single-frame path: ``‖(O − Ŝ) − b‖² + λr ‖Ŝ − s‖²``."""
    joint = F.mse_loss(streak_free, clean)
    removal = F.mse_loss(predicted_streaks, streaks)
    zero = joint.new_zeros(())
    return LossTerms(joint + config.lambda_removal * removal, joint, zero, zero, removal)
