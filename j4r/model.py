"""Building J4R-Net from its config, and the streaming inference helpers callers use."""

from __future__ import annotations

import torch

from j4r.arch import J4RNet, StepOutput
from j4r.color import rgb_to_ycbcr, with_luma
from j4r.config import NetConfig, to_dict
from j4r.precision import autocast


def build_model(config: NetConfig) -> J4RNet:
    return J4RNet(**to_dict(config))


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prepare_for_precision(model: J4RNet, precision: str) -> J4RNet:
    """bf16: weights in channels_last, the layout whose bf16 convolutions are fast (oneDNN on
    CPUs with AMX, cuDNN on GPUs). fp32: left as it is, so fp32 output stays bit-identical."""
    if precision == "bf16":
        model.to(memory_format=torch.channels_last)
    return model


def step_at_precision(
    model: J4RNet, luma: torch.Tensor, memory: torch.Tensor, precision: str
) -> tuple[StepOutput, torch.Tensor]:
    """:meth:`J4RNet.step` with its convolutions at ``precision``; fp32 outputs and memory."""
    if precision == "fp32":
        return model.step(luma, memory)
    with autocast(luma.device.type, precision):
        out, memory = model.step(
            luma.contiguous(memory_format=torch.channels_last),
            memory.contiguous(memory_format=torch.channels_last),
        )
    return StepOutput(*(x.float() for x in out)), memory.float()


class AtPrecision(torch.nn.Module):
    """A J4R-Net whose convolutions run at ``precision`` (``fp32`` or ``bf16``): outputs and
    the recurrent memory come back fp32, colour conversions around it stay fp32. Same
    interface as :class:`J4RNet` for callers that step or run whole clips (evaluation)."""

    forward = J4RNet.forward  # the clip loop, calling this module's step

    def __init__(self, net: J4RNet, precision: str):
        super().__init__()
        self.net = prepare_for_precision(net, precision)
        self.precision = precision
        self.channels = net.channels
        self.memory_channels = net.memory_channels
        self.chroma_fill = net.chroma_fill

    def initial_state(self, luma: torch.Tensor) -> torch.Tensor:
        return self.net.initial_state(luma)

    def step(self, luma: torch.Tensor, memory: torch.Tensor) -> tuple[StepOutput, torch.Tensor]:
        return step_at_precision(self.net, luma, memory, self.precision)

    def single_frame(self, luma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.precision == "fp32":
            return self.net.single_frame(luma)
        with autocast(luma.device.type, self.precision):
            _, streaks = self.net.rnet(self.net.features(luma))
        streaks = streaks.float()
        return luma - streaks, streaks


@torch.inference_mode()
def derain_rgb_step(
    model: J4RNet,
    frames_b3hw: torch.Tensor,
    memory: torch.Tensor | None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, StepOutput, torch.Tensor]:
    """De-rain one frame per clip: RGB ``(b, 3, h, w)`` in [0, 1] -> RGB, raw outputs, memory.

    The network sees luma; chroma passes through from the input frame, or is restored where
    the luma changed if the network's config asks for it (``chroma_fill``). ``precision`` is a
    resolved one (``fp32`` or ``bf16``, see :func:`j4r.precision.resolve_precision`): bf16
    runs the convolutions under autocast in channels_last, while the colour conversion, the
    clamped background and the recurrent memory carried to the next frame stay fp32 (a bf16
    memory would round the running state every frame; see ``derain bench``'s drift figure).
    """
    ycbcr = rgb_to_ycbcr(frames_b3hw)
    luma = ycbcr[:, :1]
    if memory is None:
        memory = model.initial_state(luma)
    out, memory = step_at_precision(model, luma, memory, precision)
    background = out.background.clamp(0.0, 1.0)
    rgb = with_luma(ycbcr, background, chroma_fill=model.chroma_fill)
    return rgb, out, memory
