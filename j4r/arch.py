"""J4R-Net: Joint Recurrent Rain Removal and Reconstruction Network (Liu et al., CVPR 2018).

Only ``nn.Module`` s live here. Conventions:

* luma frames are ``(b, 1, h, w)`` for one step and ``(b, t, 1, h, w)`` for a clip, values in
  [0, 1] (Y of BT.601 YCbCr); every convolution is 3x3 stride 1 with zero padding, so any frame
  size works without padding or cropping;
* the recurrent memory ``H`` is an explicit tensor ``(b, channels, h, w)`` the caller passes in
  and gets back: the module stores no state, so one model can serve many clips at once and
  clips can be batched together;
* the network is causal: the outputs for frame ``t`` depend only on frames ``<= t``.

Hybrid rain model: ``O = (1 − α)(B + S) + α A``. R-Net estimates the streaks ``S`` where the
background shows through (α = 0); C-Net reconstructs detail where the drop occludes it (α = 1)
from the temporal memory; D-Net classifies α; JRC-Net joins both into ``B̂``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class ResidualPair(nn.Module):
    """Two 3x3 convs merged with the input as ``0.5 x + 0.5 conv(conv(x))`` (authors' code)."""

    def __init__(self, *, channels: int):
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x + 0.5 * F.relu(self.conv2(F.relu(self.conv1(x))))


class FeatureCNN(nn.Module):
    """First conv plus the 2-layer extractor: luma ``(b, 1, h, w)`` -> ``F_t (b, c, h, w)``."""

    def __init__(self, *, channels: int):
        super().__init__()
        self.head = conv3x3(1, channels)
        self.body = nn.Sequential(
            conv3x3(channels, channels), nn.ReLU(), conv3x3(channels, channels), nn.ReLU()
        )

    def forward(self, luma: torch.Tensor) -> torch.Tensor:
        return self.body(F.relu(self.head(luma)))


class DNet(nn.Module):
    """Degradation classification: ``(F_t, H_{t-1})`` -> α logits ``(b, 2, h, w)``.

    Channel 1 of the logits is "occluded" (α = 1); channel 0 is "streaks or clean" (α = 0).
    """

    def __init__(self, *, channels: int, layers: int):
        super().__init__()
        body: list[nn.Module] = [conv3x3(2 * channels, channels), nn.ReLU()]
        for _ in range(layers - 1):
            body += [conv3x3(channels, channels), nn.ReLU()]
        self.body = nn.Sequential(*body)
        self.logits = conv3x3(channels, 2)

    def forward(self, features: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self.logits(self.body(torch.cat([features, memory], dim=1)))


class FNet(nn.Module):
    """Fusion GRU whose gates also see the degradation map (slides' F-Net).

    ``z = σ(W_z F + U_z H + V_z d)``, ``r = ReLU(W_r F + U_r H + V_r d)``,
    ``H~ = tanh(W_h F + U_h (r ⊙ H))``, ``H_t = (1 − z) H_{t-1} + z H~`` with ``d`` the α logits.
    """

    def __init__(self, *, channels: int):
        super().__init__()
        self.channels = channels
        self.gates = conv3x3(2 * channels + 2, 2 * channels)  # [W|U|V] for z and r at once
        self.candidate_input = conv3x3(channels, channels)  # W_h
        self.candidate_memory = conv3x3(channels, channels)  # U_h

    def forward(
        self, features: torch.Tensor, memory: torch.Tensor, alpha_logits: torch.Tensor
    ) -> torch.Tensor:
        gates = self.gates(torch.cat([features, memory, alpha_logits], dim=1))
        update_logit, read_logit = gates.split(self.channels, dim=1)
        update = torch.sigmoid(update_logit)
        read = F.relu(read_logit)
        candidate = torch.tanh(
            self.candidate_input(features) + self.candidate_memory(read * memory)
        )
        return (1 - update) * memory + update * candidate


class ContextBranch(nn.Module):
    """A view four times coarser: ``(b, c, h, w)`` -> ``(b, c, h, w)``, zero until trained.

    Three 3×3 convolutions dilated 1, 2 and 4 over the features average-pooled by ``factor``
    see about ``15 · factor`` px (60 at 4) where R-Net's own stack sees about 20: enough to
    tell a long streak, or a sheet of evenly spaced ones, from texture of the same width. The
    1×1 output convolution starts at zero, so a network given the branch computes exactly what
    it did without it; the coarse work costs about a fifth of one full-resolution conv. A wider
    view also wants a wider tile overlap in tiled inference (``--tile-overlap 64``, not 32).
    """

    def __init__(self, *, channels: int, factor: int = 4):
        super().__init__()
        self.factor = factor
        layers: list[nn.Module] = []
        for dilation in (1, 2, 4):
            layers += [nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)]
            layers += [nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, channels, kernel_size=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        coarse = F.avg_pool2d(features, self.factor, ceil_mode=True)
        view = self.out(self.body(coarse))  # linear, so it commutes with the upsampling
        return F.interpolate(view, size=features.shape[-2:], mode="bilinear", align_corners=False)


class RNet(nn.Module):
    """Rain removal: ``F_t`` (with ``sees_memory`` also ``H_{t-1}``) -> (hidden, ``Ŝ``).

    In the paper R-Net works from the current frame's appearance alone, so a thin bright pole
    and a streak look alike to it. With ``sees_memory`` (beyond the paper) a bias-free conv of
    the recurrent memory from before this frame is added to its input: what was already there
    (a pole the camera pans over) can be told from what is new (rain falls). The conv starts at
    zero, so a network given it behaves exactly as before until it learns, and with an empty
    memory (a clip's first frame, the single-frame path) it is the spatial R-Net. ``Ŝ`` is
    ``(b, 1, h, w)``, unbounded (``O − Ŝ`` is the streak-free estimate). With ``context``
    (beyond the paper) a :class:`ContextBranch`'s coarse view is added to its input too.
    """

    def __init__(
        self, *, channels: int, blocks: int, sees_memory: bool = False, context: bool = False
    ):
        super().__init__()
        self.memory_input: nn.Conv2d | None = None
        if sees_memory:
            self.memory_input = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
            nn.init.zeros_(self.memory_input.weight)
        self.context = ContextBranch(channels=channels) if context else None
        self.body = nn.Sequential(*[ResidualPair(channels=channels) for _ in range(blocks)])
        self.tail = nn.Sequential(conv3x3(channels, channels), nn.ReLU())
        self.streak = conv3x3(channels, 1)

    def forward(
        self, features: torch.Tensor, memory: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.context is not None:
            features = features + self.context(features)
        if self.memory_input is not None and memory is not None:
            features = features + self.memory_input(memory)
        hidden = self.tail(self.body(features))
        return hidden, self.streak(hidden)


class CNet(nn.Module):
    """Reconstruction of occluded detail from temporal memory: ``(H_t, F_t)`` -> hidden, detail.

    The detail map ``(b, 1, h, w)`` is the high-pass content of the background the memory
    remembers; the loss supervises it through ``E(B̂)``.
    """

    def __init__(self, *, channels: int, blocks: int):
        super().__init__()
        self.head = nn.Sequential(conv3x3(2 * channels, channels), nn.ReLU())
        self.body = nn.Sequential(*[ResidualPair(channels=channels) for _ in range(blocks)])
        self.detail = conv3x3(channels, 1)

    def forward(
        self, memory: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.body(self.head(torch.cat([memory, features], dim=1)))
        return hidden, self.detail(hidden)


class JRCNet(nn.Module):
    """Joint rain removal and reconstruction: both hidden streams + α -> residual on ``O − Ŝ``."""

    def __init__(self, *, channels: int, blocks: int):
        super().__init__()
        self.head = nn.Sequential(conv3x3(2 * channels + 4, channels), nn.ReLU())
        self.body = nn.Sequential(*[ResidualPair(channels=channels) for _ in range(blocks)])
        self.residual = conv3x3(channels, 1)

    def forward(
        self,
        removal_hidden: torch.Tensor,
        reconstruction_hidden: torch.Tensor,
        alpha_logits: torch.Tensor,
        streak_free: torch.Tensor,
        detail: torch.Tensor,
    ) -> torch.Tensor:
        x = torch.cat(
            [removal_hidden, reconstruction_hidden, alpha_logits, streak_free, detail], dim=1
        )
        return self.residual(self.body(self.head(x)))


class RainGate(nn.Module):
    """Where the network may change the picture: both hidden streams + α -> gate logits.

    Not in the paper. ``B̂ = O + σ(g) (B̃ − O)`` with ``B̃`` the joint estimate: a pixel the
    gate closes comes out exactly as it went in, so rain-free content (most of an archive) is
    left alone instead of being re-synthesised. Supervised with the mask of pixels the rain
    changed (:func:`j4r.losses.rain_touched`). The last conv's bias starts at +3 (σ ≈ 0.95),
    so a gate added to a trained network first behaves like the network without it.
    """

    def __init__(self, *, channels: int):
        super().__init__()
        self.head = nn.Sequential(conv3x3(2 * channels + 2, channels), nn.ReLU())
        self.logits = conv3x3(channels, 1)
        nn.init.normal_(self.logits.weight, std=1e-3)
        nn.init.constant_(self.logits.bias, 3.0)

    def forward(
        self,
        removal_hidden: torch.Tensor,
        reconstruction_hidden: torch.Tensor,
        alpha_logits: torch.Tensor,
    ) -> torch.Tensor:
        x = torch.cat([removal_hidden, reconstruction_hidden, alpha_logits], dim=1)
        return self.logits(self.head(x))


class PooledHead(nn.Module):
    """A frame-level decision affine in the frame's mean per-pixel evidence.

    The evidence is a per-pixel MLP (1x1 convolutions, non-negative outputs); :meth:`pool`
    takes its plain mean and :meth:`decide` is affine, so a frame's logits are the mean of its
    parts' logits weighted by their share of the frame (tiles reach the whole frame's
    decision) and a head can be fitted on random pixel samples of a frozen network.
    """

    def __init__(self, *, in_channels: int, hidden: int, evidence_channels: int, outputs: int):
        super().__init__()
        self.in_channels = in_channels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(hidden, evidence_channels, kernel_size=1),
            nn.ReLU(),
        )
        self.decision = nn.Linear(evidence_channels, outputs)

    def evidence(self, inputs: torch.Tensor) -> torch.Tensor:
        """Per-pixel evidence ``(b, evidence_channels, h, w)``, non-negative."""
        return self.body(inputs)

    @staticmethod
    def pool(evidence: torch.Tensor) -> torch.Tensor:
        """``(b, k, h, w)`` -> ``(b, k)``: the frame's mean evidence."""
        return evidence.float().mean(dim=(-2, -1))

    def decide(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled evidence ``(b, k)`` -> logits ``(b, outputs)``."""
        return self.decision(pooled.to(self.decision.weight.dtype))


class RainPresence(PooledHead):
    """Is there rain in this frame at all? Per-pixel evidence, pooled over the frame, -> a logit.

    Not in the paper. Most frames of an archive are dry, and a per-pixel gate alone cannot
    tell a thin bright pole or a glyph from a streak: in one place they look alike. Over a
    whole frame they do not: rain leaves many small, scattered, short-lived marks, a pole one
    persistent one. The final output is ``B̂ = O + σ(p) (B̂_local − O)`` with ``p`` this
    module's logit, so a frame judged dry comes out as it went in.

    The evidence is a per-pixel MLP (1x1 convolutions) over what the network already knows at
    that pixel (both hidden streams, α, the gate, the local change), so it can be fitted on
    pixel samples of a frozen network (:mod:`j4r.presence`). It is pooled by a plain mean
    (:meth:`pool`) and the decision is affine (:meth:`decide`), so the logit of a whole frame
    is the mean of its parts' logits weighted by their share of the frame: a frame run as
    tiles gets the decision it would get whole (:func:`j4r.tiling.derain_tiled_frame`). Keep
    both linear. The decision's bias starts at +4 (σ ≈ 0.98): a head added to a trained
    network first leaves it as it was.
    """

    def __init__(
        self,
        *,
        channels: int,
        hidden: int = 32,
        evidence_channels: int = 16,
        persistence: bool = False,
    ):
        super().__init__(
            in_channels=2 * channels + 4 + (2 if persistence else 0),
            hidden=hidden,
            evidence_channels=evidence_channels,
            outputs=1,
        )
        self.persistence = persistence
        nn.init.normal_(self.decision.weight, std=1e-3)
        nn.init.constant_(self.decision.bias, 4.0)

    @staticmethod
    def inputs(
        removal_hidden: torch.Tensor,
        reconstruction_hidden: torch.Tensor,
        alpha_logits: torch.Tensor,
        gate_logits: torch.Tensor,
        change: torch.Tensor,
        persistence: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """What the evidence sees per pixel: ``(b, 2 channels + 4, h, w)``, plus the change's
        persistent and new parts (:func:`change_persistence`) when the head takes them."""
        gate = torch.sigmoid(gate_logits)
        parts = [removal_hidden, reconstruction_hidden, alpha_logits, gate, change]
        if persistence is not None:
            parts += [p.to(change.dtype) for p in persistence]
        return torch.cat(parts, 1)


def presence_scale(
    presence_logits: torch.Tensor, ramp: tuple[float, float] = (0.0, 1.0)
) -> torch.Tensor:
    """The share of the local change a frame gets, from its logits (any shape).

    P(rain) = σ(p) through ``ramp (lo, hi)``: 0 up to ``lo`` (the frame comes out as it went
    in, bit for bit), 1 from ``hi``, linear between. ``(0, 1)`` is P(rain) itself. A sigmoid
    never reaches 0, so without a ramp a frame judged dry at P = 0.1 still gets a tenth of
    the change.
    """
    probability = torch.sigmoid(presence_logits)
    lo, hi = ramp
    if (lo, hi) == (0.0, 1.0):
        return probability
    return ((probability - lo) / (hi - lo)).clamp(0.0, 1.0)


def apply_presence(
    luma: torch.Tensor,
    local_background: torch.Tensor,
    presence_logits: torch.Tensor,
    ramp: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """``O + s(p) (B̂_local − O)``: luma ``(b, 1, h, w)``, logits ``(b, 1)``; ``s`` is
    :func:`presence_scale`."""
    scale = presence_scale(presence_logits, ramp)[:, :, None, None].to(local_background.dtype)
    return luma + scale * (local_background - luma)


PRESENCE_STATE_CHANNELS = 2  # the running average's sum and weight
PERSISTENCE_STATE_CHANNELS = 2  # the previous frame's |change|, and "a frame was seen"
# A change counts as persistent where the previous frame changed within this window: what the
# camera moved by a pixel or so is still the same structure; a falling drop is long gone.
PERSISTENCE_WINDOW = 3


def change_persistence(
    change: torch.Tensor, state: torch.Tensor
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Split this frame's local change ``|B̂_local − O|`` (b, 1, h, w) into the part that was
    already there a frame ago, within :data:`PERSISTENCE_WINDOW` (a pole, a window grid, an
    edge the network keeps touching), and the new part (rain: streaks are somewhere else in
    every frame). Both non-negative, they add up to ``|change|``.

    ``state (b, 2, h, w)``: the previous frame's ``|change|`` and a flag that one was seen
    (zeros for a new clip, whose first frame counts as all persistent: no evidence of rain
    from the time axis yet). Per pixel and local, so tiles with an overlap compute it exactly.
    """
    size = change.abs().float()
    previous, seen = state[:, :1].float(), state[:, 1:2].float()
    previous = seen * previous + (1.0 - seen) * size
    nearby = F.max_pool2d(previous, PERSISTENCE_WINDOW, stride=1, padding=PERSISTENCE_WINDOW // 2)
    persistent = torch.minimum(size, nearby)
    return (persistent, size - persistent), torch.cat([size, torch.ones_like(size)], dim=1)


def smooth_presence(
    frame_logits: torch.Tensor, state: torch.Tensor, momentum: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the presence logit over time: rain does not stop and start between frames.

    ``state (b, 2, h, w)`` holds the exponential average's sum and weight (both constant over
    the frame; zeros for a new clip), ``momentum`` the share of the past in each update (0: no
    smoothing). Returns the smoothed logits ``(b, 1)`` (sum / weight: a new clip's first frame
    is its own logit, no bias toward zero) and the new state. Linear in the logits, so a tiled
    frame, whose logit is a weighted mean of its tiles', is smoothed exactly like the whole one.
    """
    b, _, h, w = state.shape
    past_sum, past_weight = state[:, 0, 0, :1].float(), state[:, 1, 0, :1].float()
    total = momentum * past_sum + (1.0 - momentum) * frame_logits.float()
    weight = momentum * past_weight + (1.0 - momentum)
    new_state = torch.cat([total, weight], dim=1)[:, :, None, None].expand(b, 2, h, w)
    return total / weight, new_state


# The veil head's largest haze share: a downpour's veil rarely hides more than this, and
# 1 / (1 − v) would amplify the frame's noise without bound as v nears 1.
VEIL_MAX = 0.45
# A fresh head's haze logit: v = VEIL_MAX σ(−30) ≈ 4e−14, the frame as it came.
CLOSED_VEIL_LOGIT = -30.0


class VeilHead(PooledHead):
    """How much a downpour's haze hides: per-pixel evidence, mean-pooled, -> two logits.

    Not in the paper. Dense rain veils the whole scene, ``O = (1 − v) X + v L`` (``X`` the
    frame behind the veil, ``L`` the brightness of the rain volume): the dark parts of the
    picture rise and contrast falls everywhere at once. A net of 3x3 convolutions sees a
    patch, and in one patch a veil and a bright, low-contrast surface look alike, so the
    trunk leaves the veil as it came. Over the whole frame they do not: this head estimates
    ``(v, L)`` per frame and :func:`lift_veil` undoes it.

    Built like :class:`RainPresence` (a per-pixel MLP over what the network knows at each
    pixel, the input luma and the local output; the mean over the frame; an affine
    decision), so it can be fitted on pixel samples of a frozen network (:mod:`j4r.veil`)
    and a frame run as tiles gets the estimate it would get whole. Its logits map to
    ``v = VEIL_MAX σ(z_0)`` and ``L = σ(z_1)``: the correction can only lift a veil, never
    shrink the picture. A fresh head is closed (``z_0 = −30``, ``v ≈ 4e−14``).
    """

    def __init__(self, *, in_channels: int, hidden: int = 32, evidence_channels: int = 16):
        super().__init__(
            in_channels=in_channels, hidden=hidden, evidence_channels=evidence_channels, outputs=2
        )
        nn.init.zeros_(self.decision.weight)
        with torch.no_grad():
            self.decision.bias.copy_(torch.tensor([CLOSED_VEIL_LOGIT, 1.0]))

    @staticmethod
    def inputs(
        presence_inputs: torch.Tensor, luma: torch.Tensor, local_background: torch.Tensor
    ) -> torch.Tensor:
        """What the evidence sees per pixel: the presence head's inputs, ``O`` and ``B̂_local``."""
        return torch.cat([presence_inputs, luma.to(presence_inputs.dtype),
                          local_background.to(presence_inputs.dtype)], 1)  # fmt: skip


def veil_parameters(veil_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Veil logits ``(b, 2)`` -> the haze share ``v`` in ``[0, VEIL_MAX)`` and its level ``L``
    in (0, 1), each ``(b, 1, 1, 1)`` to broadcast over a frame."""
    z = veil_logits if veil_logits.dtype == torch.float64 else veil_logits.float()
    z = z[:, :, None, None]  # fp64 stays fp64: the fit's loss from moments needs it
    return VEIL_MAX * torch.sigmoid(z[:, :1]), torch.sigmoid(z[:, 1:2])


def lift_veil(luma: torch.Tensor, veil_logits: torch.Tensor) -> torch.Tensor:
    """``(X − v L) / (1 − v)``: the frame ``(b, 1, h, w)`` with the estimated veil undone."""
    share, level = veil_parameters(veil_logits)
    return ((luma.float() - share * level) / (1.0 - share)).to(luma.dtype)


def lay_veil(luma: torch.Tensor, veil_logits: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`lift_veil`: ``(1 − v) X + v L``."""
    share, level = veil_parameters(veil_logits)
    return ((1.0 - share) * luma.float() + share * level).to(luma.dtype)


# A gate logit that σ maps to 1.0 in fp32: networks without a gate change every pixel, and
# networks without a presence head treat every frame as rainy.
OPEN_GATE_LOGIT = 30.0


class StepOutput(NamedTuple):
    """One frame's outputs, all ``(b, ·, h, w)``: ``background`` in [0, 1] after clamping."""

    background: torch.Tensor  # B̂, (b, 1, h, w)
    streaks: torch.Tensor  # Ŝ, (b, 1, h, w)
    alpha_logits: torch.Tensor  # (b, 2, h, w); softmax channel 1 = P(α = 1)
    detail: torch.Tensor  # C-Net detail map, (b, 1, h, w)
    gate_logits: torch.Tensor  # (b, 1, h, w); σ = share of the change applied (1: no gate)
    presence_logits: torch.Tensor  # (b, 1); σ = P(rain in this frame) (1: no presence head)
    local_background: torch.Tensor  # B̂ before the frame's presence scale, (b, 1, h, w)
    # (b, 2): the frame's veil logits (j4r.arch.veil_parameters); (b, 0) without a veil head.
    # local_background already has the veil lifted.
    veil_logits: torch.Tensor


class ClipOutput(NamedTuple):
    """A clip's outputs stacked over time: ``(b, t, ·, h, w)``."""

    background: torch.Tensor
    streaks: torch.Tensor
    alpha_logits: torch.Tensor
    detail: torch.Tensor
    gate_logits: torch.Tensor
    presence_logits: torch.Tensor
    local_background: torch.Tensor
    veil_logits: torch.Tensor


class J4RNet(nn.Module):
    """The whole network. Use :meth:`step` for streaming and :meth:`forward` for a clip."""

    def __init__(
        self,
        *,
        channels: int = 64,
        rnet_blocks: int = 3,
        cnet_blocks: int = 2,
        jrc_blocks: int = 2,
        dnet_layers: int = 2,
        rain_gate: bool = False,
        rain_presence: bool = False,
        presence_smoothing: float = 0.0,
        presence_ramp: tuple[float, float] = (0.0, 1.0),
        presence_persistence: bool = False,
        chroma_fill: bool = False,
        rnet_memory: bool = False,
        rnet_context: bool = False,
        veil_head: bool = False,
    ):
        super().__init__()
        self.channels = channels
        self.chroma_fill = chroma_fill  # read by the RGB callers (j4r.model.derain_rgb_step)
        self.features = FeatureCNN(channels=channels)
        self.dnet = DNet(channels=channels, layers=dnet_layers)
        self.fnet = FNet(channels=channels)
        self.rnet = RNet(
            channels=channels, blocks=rnet_blocks, sees_memory=rnet_memory, context=rnet_context
        )
        self.cnet = CNet(channels=channels, blocks=cnet_blocks)
        self.jrc = JRCNet(channels=channels, blocks=jrc_blocks)
        self.gate = RainGate(channels=channels) if rain_gate else None
        self.presence = (
            RainPresence(channels=channels, persistence=presence_persistence)
            if rain_presence
            else None
        )
        if veil_head and self.presence is None:
            raise ValueError("veil_head needs rain_presence: the veil head reads its inputs")
        self.veil = VeilHead(in_channels=self.presence.in_channels + 2) if veil_head else None
        if not 0.0 <= presence_smoothing < 1.0:
            raise ValueError(f"presence_smoothing must be in [0, 1), not {presence_smoothing}")
        self.presence_smoothing = presence_smoothing
        lo, hi = presence_ramp
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"presence_ramp must satisfy 0 <= lo < hi <= 1, not {presence_ramp}")
        self.presence_ramp = (float(lo), float(hi))

    @property
    def memory_channels(self) -> int:
        """Channels of the memory tensor: the GRU's, plus two for the presence head's running
        average (its sum and its weight, each constant over the frame) when there is one, and
        two for the previous frame's change when the head looks at its persistence."""
        if self.presence is None:
            return self.channels
        extra = PERSISTENCE_STATE_CHANNELS if self.presence.persistence else 0
        return self.channels + PRESENCE_STATE_CHANNELS + extra

    def initial_state(self, luma: torch.Tensor) -> torch.Tensor:
        """Empty memory for a batch shaped like ``luma (b, 1, h, w)``."""
        b, _, h, w = luma.shape
        return luma.new_zeros(b, self.memory_channels, h, w)

    def single_frame(self, luma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stage-1 path (first conv, extractor, R-Net): returns ``(O − Ŝ, Ŝ)``."""
        _, streaks = self.rnet(self.features(luma))
        return luma - streaks, streaks

    def step(self, luma: torch.Tensor, memory: torch.Tensor) -> tuple[StepOutput, torch.Tensor]:
        """One frame ``O_t (b, 1, h, w)`` with memory ``H_{t-1}`` -> outputs and ``H_t``."""
        split = self.channels + PRESENCE_STATE_CHANNELS
        memory, presence_state, change_state = (
            memory[:, : self.channels],
            memory[:, self.channels : split],
            memory[:, split:],
        )
        features = self.features(luma)
        alpha_logits = self.dnet(features, memory)
        removal_hidden, streaks = self.rnet(features, memory)  # H_{t-1}: what was there before
        memory = self.fnet(features, memory, alpha_logits)
        reconstruction_hidden, detail = self.cnet(memory, features)
        streak_free = luma - streaks
        residual = self.jrc(
            removal_hidden, reconstruction_hidden, alpha_logits, streak_free, detail
        )
        background = streak_free + residual
        if self.gate is None:
            gate_logits = torch.full_like(luma, OPEN_GATE_LOGIT)
        else:
            gate_logits = self.gate(removal_hidden, reconstruction_hidden, alpha_logits)
            background = luma + torch.sigmoid(gate_logits) * (background - luma)
        local = background
        veil_logits = luma.new_zeros(luma.shape[0], 0)
        if self.presence is None:
            presence_logits = luma.new_full((luma.shape[0], 1), OPEN_GATE_LOGIT)
        else:
            persistence = None
            if self.presence.persistence:
                persistence, change_state = change_persistence(local - luma, change_state)
            inputs = self.presence.inputs(
                removal_hidden,
                reconstruction_hidden,
                alpha_logits,
                gate_logits,
                local - luma,
                persistence,
            )
            frame_logits = self.presence.decide(self.presence.pool(self.presence.evidence(inputs)))
            presence_logits, presence_state = smooth_presence(
                frame_logits, presence_state, self.presence_smoothing
            )
            if self.veil is not None:
                veil_inputs = self.veil.inputs(inputs, luma, local)
                veil_logits = self.veil.decide(self.veil.pool(self.veil.evidence(veil_inputs)))
                local = lift_veil(local, veil_logits)
            background = apply_presence(luma, local, presence_logits, self.presence_ramp)
            memory = torch.cat([memory.float(), presence_state, change_state.float()], dim=1)
        out = StepOutput(
            background,
            streaks,
            alpha_logits,
            detail,
            gate_logits,
            presence_logits,
            local,
            veil_logits,
        )
        return out, memory

    def forward(
        self, clip: torch.Tensor, memory: torch.Tensor | None = None
    ) -> tuple[ClipOutput, torch.Tensor]:
        """A clip ``(b, t, 1, h, w)`` in [0, 1] -> stacked outputs and the final memory."""
        if clip.dim() != 5 or clip.shape[2] != 1:
            raise ValueError(f"expected a luma clip (b, t, 1, h, w), got {tuple(clip.shape)}")
        if memory is None:
            memory = self.initial_state(clip[:, 0])
        steps: list[StepOutput] = []
        for t in range(clip.shape[1]):
            out, memory = self.step(clip[:, t], memory)
            steps.append(out)
        stacked = ClipOutput(*(torch.stack(parts, dim=1) for parts in zip(*steps, strict=True)))
        return stacked, memory
