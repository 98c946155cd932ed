"""Fitting the rain-presence head (:class:`j4r.arch.RainPresence`) on a frozen network.

The head's evidence is a per-pixel MLP whose mean over the frame decides, so the mean over a
random sample of a frame's pixels is an unbiased estimate of it. That makes the head cheap to
fit: run the frozen network once over many synthetic clips (:func:`collect`), keep each
frame's head inputs at a few hundred random pixels and whether the frame has rain worth
removing, then fit the head on those samples for many epochs (:func:`fit`), seconds per epoch
instead of a network forward per step.

A frame counts as rainy when its rain costs more than ``threshold_db`` of PSNR (luma): rain
fainter than that is invisible, and leaving such a frame alone costs less than the changes a
de-raining net makes to a dry frame.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from j4r.arch import J4RNet, RainPresence
from j4r.data import ClipSampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PresenceSamples:
    """Per frame: the head's inputs at ``k`` random pixels and the frame's truth."""

    inputs: torch.Tensor  # (frames, k, channels) float16
    rainy: torch.Tensor  # (frames,) float in {0, 1}
    rain_psnr_db: torch.Tensor  # (frames,) PSNR of the rainy frame against the clean one
    clip: torch.Tensor  # (frames,) index of the clip the frame came from (for splits)

    def __len__(self) -> int:
        return len(self.rainy)

    def subset(self, index: torch.Tensor) -> PresenceSamples:
        return PresenceSamples(**{k: v[index] for k, v in vars(self).items()})


def frame_psnr_db(rainy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Luma PSNR per frame, ``(..., 1, h, w)`` -> ``(...)``, capped at 99 dB."""
    mse = (rainy - clean).pow(2).mean(dim=(-3, -2, -1)).clamp(min=10 ** (-9.9))
    return -10 * torch.log10(mse)  # rain_present (j4r.losses) is this < threshold_db


def sampled_frames(
    model: J4RNet,
    body: torch.nn.Module,
    sampler: ClipSampler,
    *,
    clips: int,
    batch_size: int,
    seed: int,
    pixels_per_frame: int,
    warmup_frames: int,
    progress: bool,
    desc: str,
):
    """Run ``model`` over ``clips`` synthetic clips and, for every frame after the first
    ``warmup_frames`` (the memory fills first), yield ``(index, batch, t, out, inputs,
    sampled)``: the batch's index, the step's outputs, what a head's ``body`` saw ``(b,
    channels, h, w)`` and its values at ``pixels_per_frame`` random pixels ``(b, k, channels)``
    float16. Call it under ``torch.inference_mode``."""
    from tqdm import tqdm

    captured: list[torch.Tensor] = []
    hook = body.register_forward_hook(lambda _module, args, _out: captured.append(args[0]))
    generator = torch.Generator().manual_seed(seed)
    try:
        for index in tqdm(range(math.ceil(clips / batch_size)), disable=not progress, desc=desc):
            batch = sampler.batch(seed=seed, step=index, batch_size=batch_size)
            memory = model.initial_state(batch.rainy[:, 0])
            for t in range(batch.rainy.shape[1]):
                captured.clear()
                out, memory = model.step(batch.rainy[:, t], memory)
                if t < warmup_frames:
                    continue
                (x,) = captured
                b, c, h, w = x.shape
                pick = torch.randint(0, h * w, (b, pixels_per_frame), generator=generator)
                flat = x.flatten(2).gather(2, pick[:, None, :].expand(b, c, -1))
                yield index, batch, t, out, x, flat.transpose(1, 2).to(torch.float16)
    finally:
        hook.remove()


@torch.inference_mode()
def collect(
    model: J4RNet,
    sampler: ClipSampler,
    *,
    clips: int,
    batch_size: int = 8,
    seed: int = 0,
    pixels_per_frame: int = 512,
    warmup_frames: int = 2,
    threshold_db: float = 40.0,
    progress: bool = False,
) -> PresenceSamples:
    """Run ``model`` (which has a presence head, any weights) over ``clips`` synthetic clips
    and keep every frame after the first ``warmup_frames`` (the memory fills first)."""
    if model.presence is None:
        raise ValueError("the network has no presence head (rain_presence: false)")
    inputs, rainy, psnrs, clip_ids = [], [], [], []
    frames = sampled_frames(
        model, model.presence.body, sampler, clips=clips, batch_size=batch_size, seed=seed,
        pixels_per_frame=pixels_per_frame, warmup_frames=warmup_frames, progress=progress,
        desc="presence samples",
    )  # fmt: skip
    for index, batch, t, _, _, sampled in frames:
        inputs.append(sampled)
        psnr = frame_psnr_db(batch.rainy[:, t], batch.clean[:, t])
        psnrs.append(psnr)
        rainy.append((psnr < threshold_db).float())
        clip_ids.append(torch.arange(len(psnr)) + index * batch_size)
    return PresenceSamples(
        torch.cat(inputs), torch.cat(rainy), torch.cat(psnrs), torch.cat(clip_ids)
    )


def split_by_clip(
    samples: PresenceSamples, held_out: float, seed: int = 0
) -> tuple[PresenceSamples, PresenceSamples]:
    """Train and held-out parts with no clip in both (frames of a clip are alike)."""
    ids = torch.unique(samples.clip)
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(ids.numpy(), size=max(1, int(len(ids) * held_out)), replace=False))
    mask = torch.tensor([int(c) in chosen for c in samples.clip])
    return samples.subset(~mask), samples.subset(mask)


def head_logits(head: RainPresence, inputs: torch.Tensor) -> torch.Tensor:
    """The head on sampled pixels: ``(frames, k, channels)`` -> logits ``(frames,)``."""
    x = inputs.float().transpose(1, 2)[..., None]  # (frames, channels, k, 1): 1x1 convs apply
    return head.decide(head.pool(head.evidence(x)))[:, 0]


def scores(head: RainPresence, samples: PresenceSamples) -> dict[str, float]:
    """Log loss, accuracy, and the share of dry frames judged rainy and rainy frames judged
    dry (at P = 0.5) on ``samples``."""
    with torch.no_grad():
        logits = head_logits(head, samples.inputs)
    loss = float(F.binary_cross_entropy_with_logits(logits, samples.rainy))
    judged = logits > 0
    actual = samples.rainy > 0.5
    return {
        "log_loss": loss,
        "accuracy": float((judged == actual).float().mean()),
        "dry_judged_rainy": float(judged[~actual].float().mean()) if (~actual).any() else 0.0,
        "rainy_judged_dry": float((~judged[actual]).float().mean()) if actual.any() else 0.0,
        "frames": float(len(samples)),
    }


def _standardise_first_layer(head: RainPresence, inputs: torch.Tensor) -> None:
    """Rescale the first 1x1 conv so it sees standardised inputs (hidden features, α logits
    and the change differ in scale by orders of magnitude), folded into its weights: the
    head stays a plain module that runs on the network's raw values."""
    x = inputs.float().flatten(0, 1)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-4)
    conv = head.body[0]
    with torch.no_grad():
        fan_in = conv.weight.shape[1]
        conv.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
        conv.bias.zero_()
        conv.weight /= std[None, :, None, None]
        conv.bias -= (conv.weight[:, :, 0, 0] * mean[None, :]).sum(1)


def fit(
    head: RainPresence,
    train: PresenceSamples,
    *,
    epochs: int = 40,
    lr: float = 3e-3,
    batch_frames: int = 64,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Fit ``head`` (in place) with Adam on binary cross-entropy; returns per-epoch losses.

    The decision starts from the training set's log-odds and weights of ordinary size, not
    from the nearly open initialisation (whose tiny weights would starve the MLP of gradient).
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    _standardise_first_layer(head, train.inputs)
    rate = float(train.rainy.mean().clamp(1e-3, 1 - 1e-3))
    with torch.no_grad():
        head.decision.weight.normal_(0.0, 0.1, generator=generator)
        head.decision.bias.fill_(math.log(rate / (1 - rate)))
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    for epoch in range(epochs):
        order = torch.randperm(len(train), generator=generator)
        total = 0.0
        for start in range(0, len(train), batch_frames):
            index = order[start : start + batch_frames]
            logits = head_logits(head, train.inputs[index])
            loss = F.binary_cross_entropy_with_logits(logits, train.rainy[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        for group in optimizer.param_groups:  # cosine-free: a plain decay is enough here
            group["lr"] = lr * (0.05 ** ((epoch + 1) / epochs))
        history.append({"epoch": epoch, "log_loss": total / len(train)})
    return history


def with_presence_head(
    folder,
    *,
    smoothing: float | None = None,
    ramp: tuple[float, float] | None = None,
    persistence: bool | None = None,
    device: str = "cpu",
):
    """The checkpoint in ``folder`` as a network with a presence head (its own when it has
    one, else a fresh one), frozen in eval mode; returns ``(model, info)``. ``smoothing``
    sets the head's time smoothing and ``ramp`` how P(rain) scales the change (None: the
    checkpoint's, or the defaults for a new head); ``persistence`` whether the head sees the
    change's persistence (a head that did not is replaced by a fresh one, the rest kept)."""
    from j4r.checkpoint import load_checkpoint, read_info
    from j4r.model import build_model
    from j4r.train import initialise_from

    info = read_info(folder)
    if smoothing is None:
        smoothing = info.net.presence_smoothing
    if persistence is None:
        persistence = info.net.presence_persistence
    net = dataclasses.replace(
        info.net,
        rain_presence=True,
        presence_smoothing=smoothing,
        presence_ramp=info.net.presence_ramp if ramp is None else tuple(ramp),
        presence_persistence=persistence,
    )
    model = build_model(net)
    if persistence == info.net.presence_persistence:
        initialise_from(model, folder, net)
    else:  # the head's inputs change: a new head on the checkpoint's trunk
        source, _ = load_checkpoint(folder)
        trunk = {k: v for k, v in source.state_dict().items() if not k.startswith("presence.")}
        missing, unexpected = model.load_state_dict(trunk, strict=False)
        if unexpected or any(not key.startswith("presence.") for key in missing):
            raise ValueError(f"{folder}: weights do not fit: {missing + unexpected}")
    return model.to(device).eval(), dataclasses.replace(info, net=net)


def fit_and_score(
    head: RainPresence,
    samples: PresenceSamples,
    *,
    epochs: int = 15,
    weight_decay: float = 1e-2,
    held_out: float = 0.25,
    seed: int = 0,
) -> dict:
    """Fit ``head`` on all but a held-out share of the clips; returns both parts' scores
    (the held-out ones are the honest figure) and the sample counts."""
    train_part, held_part = split_by_clip(samples, held_out, seed=seed)
    history = fit(head, train_part, epochs=epochs, weight_decay=weight_decay, seed=seed)
    return {
        "epochs": epochs,
        "weight_decay": weight_decay,
        "final_train_loss": history[-1]["log_loss"],
        "train": scores(head, train_part),
        "held_out": scores(head, held_part),
        "frames": len(samples),
        "rainy_share": float(samples.rainy.mean()),
    }


def relabel(samples: PresenceSamples, threshold_db: float) -> PresenceSamples:
    """The same samples labelled at another threshold (each frame keeps its rain's PSNR)."""
    return dataclasses.replace(samples, rainy=(samples.rain_psnr_db < threshold_db).float())


def save_samples(samples, path) -> None:
    """Save a sample set (:class:`PresenceSamples` or :class:`j4r.veil.VeilSamples`)."""
    torch.save(dict(vars(samples)), path)


def load_samples(path, kind: type = PresenceSamples):
    """A sample set saved by :func:`save_samples`, as ``kind``."""
    return kind(**torch.load(path, weights_only=True))


def concat(parts: list):
    """Several sample sets of one kind as one; clip ids stay distinct across parts."""
    offset, clips = 0, []
    for part in parts:
        clips.append(part.clip + offset)
        offset += int(part.clip.max()) + 1 if len(part) else 0
    kind = type(parts[0])
    fields = {
        f.name: torch.cat([getattr(p, f.name) for p in parts])
        for f in dataclasses.fields(kind)
        if f.name != "clip"
    }
    return kind(**fields, clip=torch.cat(clips))
