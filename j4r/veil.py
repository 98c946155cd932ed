"""Fitting the veil head (:class:`j4r.arch.VeilHead`) on a frozen network.

The network leaves a downpour's haze as it came (measured on training-style downpours: a
veil of ``v = 0.15`` takes the output from 19.1 to 16.6 dB, and a veil alone passes through
untouched); the head estimates it per frame. Like the presence head (:mod:`j4r.presence`),
its evidence is a per-pixel MLP whose frame mean decides, so it is fitted on a few hundred
random pixels of each frame of a frozen network. What it does to the output is affine per
frame, so its loss is exact from nine frame moments: the final output is
``(1 − s) O + s (a x + c)`` with ``x`` the local output, ``s`` the frame's presence scale,
``a = 1 / (1 − v)`` and ``c = −v L / (1 − v)``, and its squared error against the clean frame
``y`` expands into the means of ``O, x, y`` and their products. The loss is the mean over
frames of ``10 log10 MSE``: a dry frame, whose error is tiny, weighs as much as a downpour,
so lifting a veil that is not there costs dearly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch

from j4r import presence
from j4r.arch import J4RNet, VeilHead, presence_scale, veil_parameters
from j4r.data import ClipSampler
from j4r.presence import frame_psnr_db, split_by_clip

logger = logging.getLogger(__name__)

# A fit starts from a thin veil (v = VEIL_MAX σ(−4) ≈ 0.008, L ≈ 0.73), not from the closed
# head: at v ≈ 0 the haze share's gradient vanishes and a head pushed below it never recovers.
START_LOGITS = (-4.0, 1.0)


@dataclass(frozen=True)
class VeilSamples:
    """Per frame: the head's inputs at ``k`` random pixels and what the loss needs."""

    inputs: torch.Tensor  # (frames, k, channels) float16
    moments: torch.Tensor  # (frames, 9) float64: means of O, x, y, OO, xx, yy, Ox, Oy, xy
    scale: torch.Tensor  # (frames,) float64: the frame's presence scale s
    rain_psnr_db: torch.Tensor  # (frames,) PSNR of the rainy frame against the clean one
    clip: torch.Tensor  # (frames,) index of the clip the frame came from (for splits)

    def __len__(self) -> int:
        return len(self.scale)

    def subset(self, index: torch.Tensor) -> VeilSamples:
        return VeilSamples(**{k: v[index] for k, v in vars(self).items()})


def frame_moments(rainy: torch.Tensor, local: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``(b, 1, h, w)`` each -> ``(b, 9)`` float64 means of ``O, x, y`` and their products."""
    o, x, y = (t.double() for t in (rainy, local, clean))
    parts = (o, x, y, o * o, x * x, y * y, o * x, o * y, x * y)
    return torch.stack([p.mean(dim=(-3, -2, -1)) for p in parts], dim=1)


def output_mse(
    moments: torch.Tensor, scale: torch.Tensor, gain: torch.Tensor, offset: torch.Tensor
) -> torch.Tensor:
    """Per-frame MSE of ``(1 − s) O + s (gain x + offset)`` against ``y``, from the moments
    (clamping to [0, 1] left out), all ``(frames,)``."""
    o, x, y, oo, xx, yy, ox, oy, xy = moments.unbind(1)
    p, q, r = 1 - scale, scale * gain, scale * offset  # output = p O + q x + r
    mse = (
        p * p * oo + q * q * xx + yy + r * r
        + 2 * p * q * ox - 2 * p * oy - 2 * q * xy + 2 * p * r * o + 2 * q * r * x - 2 * r * y
    )  # fmt: skip
    return mse.clamp(min=1e-10)


def lift_affine(veil_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Veil logits ``(frames, 2)`` -> :func:`j4r.arch.lift_veil` as ``gain x + offset``."""
    share, level = (p.flatten() for p in veil_parameters(veil_logits.double()))
    return 1 / (1 - share), -share * level / (1 - share)


def head_logits(head: VeilHead, inputs: torch.Tensor) -> torch.Tensor:
    """The head on sampled pixels: ``(frames, k, channels)`` -> logits ``(frames, 2)``."""
    x = inputs.float().transpose(1, 2)[..., None]  # (frames, channels, k, 1): 1x1 convs apply
    return head.decide(head.pool(head.evidence(x)))


@torch.inference_mode()
def collect(
    model: J4RNet,
    sampler: ClipSampler,
    *,
    clips: int,
    batch_size: int = 8,
    seed: int = 0,
    pixels_per_frame: int = 384,
    warmup_frames: int = 1,
    progress: bool = False,
) -> VeilSamples:
    """Run ``model`` (which has a veil head, any weights) over ``clips`` synthetic clips and
    keep every frame after the first ``warmup_frames``."""
    if model.veil is None:
        raise ValueError("the network has no veil head (veil_head: false)")
    inputs, moments, scales, psnrs, clip_ids = [], [], [], [], []
    frames = presence.sampled_frames(
        model, model.veil.body, sampler, clips=clips, batch_size=batch_size, seed=seed,
        pixels_per_frame=pixels_per_frame, warmup_frames=warmup_frames, progress=progress,
        desc="veil samples",
    )  # fmt: skip
    for index, batch, t, out, x, sampled in frames:  # x's last channel is B̂_local
        inputs.append(sampled)
        rainy, clean = batch.rainy[:, t], batch.clean[:, t]
        moments.append(frame_moments(rainy, x[:, -1:], clean))
        scales.append(presence_scale(out.presence_logits, model.presence_ramp)[:, 0].double())
        psnrs.append(frame_psnr_db(rainy, clean))
        clip_ids.append(torch.arange(len(rainy)) + index * batch_size)
    return VeilSamples(
        torch.cat(inputs), torch.cat(moments), torch.cat(scales), torch.cat(psnrs),
        torch.cat(clip_ids),
    )  # fmt: skip


def gains_db(head: VeilHead, samples: VeilSamples) -> torch.Tensor:
    """Per frame, how many dB the head adds to the final output's PSNR (negative: harm)."""
    with torch.no_grad():
        gain, offset = lift_affine(head_logits(head, samples.inputs))
    one, zero = torch.ones_like(gain), torch.zeros_like(offset)
    before = output_mse(samples.moments, samples.scale, one, zero)
    after = output_mse(samples.moments, samples.scale, gain, offset)
    return 10 * torch.log10(before / after)


def scores(head: VeilHead, samples: VeilSamples) -> dict[str, float]:
    """Mean gain (dB) over all frames, dry ones (rain costs < 0.01 dB: PSNR > 45), rainy ones
    (< 35 dB) and downpours (< 20 dB), the worst frame's, and the mean haze share."""
    gains = gains_db(head, samples)
    with torch.no_grad():
        share = veil_parameters(head_logits(head, samples.inputs))[0].flatten()
    psnr = samples.rain_psnr_db
    record = {"frames": float(len(samples)), "gain_db": float(gains.mean())}
    for name, chosen in (("dry", psnr > 45), ("rainy", psnr < 35), ("downpour", psnr < 20)):
        record[f"gain_db_{name}"] = float(gains[chosen].mean()) if chosen.any() else 0.0
    record["worst_frame_db"] = float(gains.min())
    record["mean_share"] = float(share.mean())
    return record


def _standardise_first_layer(head: VeilHead, inputs: torch.Tensor) -> None:
    """Rescale the first 1x1 conv so it sees standardised inputs, folded into its weights."""
    x = inputs.float().flatten(0, 1)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-4)
    conv = head.body[0]
    with torch.no_grad():
        bound = 1 / math.sqrt(conv.weight.shape[1])
        conv.weight.uniform_(-bound, bound)
        conv.bias.uniform_(-bound, bound)
        conv.weight /= std[None, :, None, None]
        conv.bias -= (conv.weight[:, :, 0, 0] * mean[None, :]).sum(1)


def fit(
    head: VeilHead,
    train: VeilSamples,
    *,
    epochs: int = 60,
    lr: float = 3e-3,
    batch_frames: int = 256,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Fit ``head`` (in place) with Adam on the mean of ``10 log10 MSE`` of the final output;
    returns per-epoch losses."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    _standardise_first_layer(head, train.inputs)
    with torch.no_grad():
        head.decision.weight.zero_()
        head.decision.bias.copy_(torch.tensor(START_LOGITS))
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    history = []
    for epoch in range(epochs):
        order = torch.randperm(len(train), generator=generator)
        total = 0.0
        for start in range(0, len(train), batch_frames):
            index = order[start : start + batch_frames]
            gain, offset = lift_affine(head_logits(head, train.inputs[index]))
            mse = output_mse(train.moments[index], train.scale[index], gain, offset)
            loss = (10 * torch.log10(mse)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        for group in optimizer.param_groups:  # decays to 1/20: late steps must not undo it
            group["lr"] = lr * (0.05 ** ((epoch + 1) / epochs))
        history.append({"epoch": epoch, "loss_db": total / len(train)})
    return history


def fit_and_score(
    head: VeilHead, samples: VeilSamples, *, epochs: int = 60, batch_frames: int = 256,
    held_out: float = 0.25, seed: int = 0,
) -> dict:  # fmt: skip
    """Fit ``head`` on all but a held-out share of the clips; returns both parts' scores."""
    train_part, held_part = split_by_clip(samples, held_out, seed=seed)
    history = fit(head, train_part, epochs=epochs, batch_frames=batch_frames, seed=seed)
    return {
        "epochs": epochs,
        "final_train_loss_db": history[-1]["loss_db"],
        "train": scores(head, train_part),
        "held_out": scores(head, held_part),
        "frames": len(samples),
    }


def with_veil_head(folder, *, device: str = "cpu"):
    """The checkpoint in ``folder`` as a network with a veil head (its own when it has one,
    else a fresh, closed one), frozen in eval mode; returns ``(model, info)``. The checkpoint
    must have a presence head: the veil head reads its inputs."""
    from j4r.checkpoint import load_checkpoint, read_info
    from j4r.model import build_model

    info = read_info(folder)
    if not info.net.rain_presence:
        raise ValueError(f"{folder} has no rain-presence head: fit one first (fit-presence)")
    net = dataclasses.replace(info.net, veil_head=True)
    model = build_model(net)
    source, _ = load_checkpoint(folder)
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    if unexpected or any(not key.startswith("veil.") for key in missing):
        raise ValueError(f"{folder}: weights do not fit: {missing + unexpected}")
    return model.to(device).eval(), dataclasses.replace(info, net=net)


def load_samples(path) -> VeilSamples:
    """Samples saved by :func:`j4r.presence.save_samples` (which also joins sets: ``concat``)."""
    return presence.load_samples(path, VeilSamples)
