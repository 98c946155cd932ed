"""Building J4R-Net from its config, and the streaming inference helpers callers use."""

from __future__ import annotations

import torch

from j4r.arch import J4RNet, StepOutput
from j4r.color import rgb_to_ycbcr, with_luma
from j4r.config import NetConfig, to_dict


def build_model(config: NetConfig) -> J4RNet:
    return J4RNet(**to_dict(config))


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def derain_rgb_step(
    model: J4RNet, frames_b3hw: torch.Tensor, memory: torch.Tensor | None
) -> tuple[torch.Tensor, StepOutput, torch.Tensor]:
    """De-rain one frame per clip: RGB ``(b, 3, h, w)`` in [0, 1] -> RGB, raw outputs, memory.

    The network sees luma; chroma passes through from the input frame.
    """
    ycbcr = rgb_to_ycbcr(frames_b3hw)
    luma = ycbcr[:, :1]
    if memory is None:
        memory = model.initial_state(luma)
    out, memory = model.step(luma, memory)
    background = out.background.clamp(0.0, 1.0)
    rgb = with_luma(ycbcr, background)
    return rgb, out, memory
