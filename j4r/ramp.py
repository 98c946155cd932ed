"""Choosing the presence ramp (how P(rain) scales a frame's change) on validation clips.

A ramp ``(lo, hi)`` gives a frame ``s = clamp((P - lo) / (hi - lo), 0, 1)`` of the network's
local change: a frame under ``lo`` comes out bit for bit as it went in. Where to put it is a
trade: a cautious ramp leaves more dry frames alone and more faint or unfamiliar rain in.

The network's output for any ramp follows from three sums per frame, so one pass over the
clips scores every ramp: with ``O`` the rainy frame, ``B`` the clean one and ``L`` the local
output, ``O + s (L - O) - B = (O - B) + s (L - O)``, whose mean square is
``rain + 2 s cross + s² change`` (:class:`FrameChanges`).

:func:`choose_ramp` takes the ramp that removes the most rain while dry frames stay within a
stated PSNR of the input. The clips come from :class:`j4r.data.ClipSampler`: training content
and the training rain renderer, never the evaluation sets, so the choice does not tune on what
``derain eval`` scores. Use a seed the presence head was not fitted on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from j4r.arch import J4RNet, presence_scale
from j4r.data import ClipSampler

# Candidate ramps of ``derain tune-ramp``: the shipped 0.25-0.75 and ever more cautious ones.
DEFAULT_RAMPS: tuple[tuple[float, float], ...] = (
    (0.25, 0.75),
    (0.4, 0.8),
    (0.5, 0.9),
    (0.6, 0.95),
    (0.7, 0.95),
    (0.8, 0.97),
    (0.9, 0.99),
    (0.95, 0.995),
)
# A frame whose rain moves it less than this MSE from the clean one counts as dry.
DRY_MSE = 1e-12
PSNR_CAP_DB = 99.0


@dataclass(frozen=True)
class FrameChanges:
    """Per validation frame (all ``(frames,)`` float64 tensors): the presence head's logit
    (P(rain) = σ(logit)) and, over the frame's pixels (luma in [0, 1]), the mean squares
    ``rain = |O - B|²``, ``change = |L - O|²`` and ``cross = (O - B)·(L - O)``."""

    logits: torch.Tensor
    rain: torch.Tensor
    change: torch.Tensor
    cross: torch.Tensor

    def output_mse(self, share: torch.Tensor) -> torch.Tensor:
        """Mean square error against the clean frame when each frame gets ``share`` of its
        change."""
        return (self.rain + 2 * share * self.cross + share**2 * self.change).clamp(min=0.0)


@torch.inference_mode()
def measure_changes(
    model: J4RNet,
    sampler: ClipSampler,
    *,
    clips: int,
    seed: int,
    batch_size: int = 8,
    warmup_frames: int = 2,
    progress: bool = False,
) -> FrameChanges:
    """Run ``model`` (with a presence head) over ``clips`` synthetic clips; keep every frame
    after the first ``warmup_frames`` (the memory fills first, as in fitting the head)."""
    from tqdm import tqdm

    if model.presence is None:
        raise ValueError("the network has no presence head (rain_presence: false)")
    parts: dict[str, list[torch.Tensor]] = {"logits": [], "rain": [], "change": [], "cross": []}
    batches = math.ceil(clips / batch_size)
    for index in tqdm(range(batches), disable=not progress, desc="validation clips"):
        batch = sampler.batch(seed=seed, step=index, batch_size=batch_size)
        memory = model.initial_state(batch.rainy[:, 0])
        for t in range(batch.rainy.shape[1]):
            out, memory = model.step(batch.rainy[:, t], memory)
            if t < warmup_frames:
                continue
            rainy, clean = batch.rainy[:, t].double(), batch.clean[:, t].double()
            rain, change = rainy - clean, out.local_background.double() - rainy
            parts["logits"].append(out.presence_logits[:, 0].double())
            parts["rain"].append(rain.pow(2).mean(dim=(1, 2, 3)))
            parts["change"].append(change.pow(2).mean(dim=(1, 2, 3)))
            parts["cross"].append((rain * change).mean(dim=(1, 2, 3)))
    return FrameChanges(**{k: torch.cat(v) for k, v in parts.items()})


def _psnr(mse: torch.Tensor) -> torch.Tensor:
    return (-10 * torch.log10(mse.clamp(min=10 ** (-PSNR_CAP_DB / 10)))).clamp(max=PSNR_CAP_DB)


def score_ramp(changes: FrameChanges, ramp: tuple[float, float], threshold_db: float) -> dict:
    """What ``ramp`` would give on the measured frames.

    Dry frames: the share changed at all and their pooled PSNR against the input (harm).
    Rainy frames (rain costing more than ``threshold_db``): the mean PSNR gain over the rainy
    input and the share left wholly alone. Faint rain (under the threshold): the mean gain.
    """
    share = presence_scale(changes.logits, ramp)
    dry = changes.rain < DRY_MSE
    rain_db = _psnr(changes.rain)
    rainy = ~dry & (rain_db < threshold_db)
    faint = ~dry & ~rainy
    gain = _psnr(changes.output_mse(share)) - rain_db
    harm = (share**2 * changes.change)[dry]
    return {
        "ramp": [float(ramp[0]), float(ramp[1])],
        "dry_frames": int(dry.sum()),
        "dry_changed": float((share[dry] > 0).double().mean()) if dry.any() else 0.0,
        "dry_pooled_psnr": float(_psnr(harm.mean())) if dry.any() else PSNR_CAP_DB,
        "rainy_frames": int(rainy.sum()),
        "rainy_gain_db": float(gain[rainy].mean()) if rainy.any() else 0.0,
        "rainy_untouched": float((share[rainy] == 0).double().mean()) if rainy.any() else 0.0,
        "faint_frames": int(faint.sum()),
        "faint_gain_db": float(gain[faint].mean()) if faint.any() else 0.0,
    }


def choose_ramp(rows: list[dict], min_dry_psnr: float) -> dict:
    """The ramp that removes the most rain (mean gain on rainy frames) while dry frames,
    pooled, stay at least ``min_dry_psnr`` from the input; when none does, the one that
    harms dry frames least. A bound on harm, not a trade-off weight: an archive is mostly dry
    footage, and what it must not do there is stated as a PSNR (issue 8: 40 dB)."""
    if not rows:
        raise ValueError("no ramps to choose from")
    safe = [r for r in rows if r["dry_pooled_psnr"] >= min_dry_psnr]
    if not safe:
        return max(rows, key=lambda r: (r["dry_pooled_psnr"], -r["dry_changed"]))
    return max(safe, key=lambda r: (r["rainy_gain_db"], r["dry_pooled_psnr"]))


def sweep(
    changes: FrameChanges,
    ramps: tuple[tuple[float, float], ...] = DEFAULT_RAMPS,
    *,
    threshold_db: float = 35.0,
) -> list[dict]:
    return [score_ramp(changes, tuple(ramp), threshold_db) for ramp in ramps]


def markdown_table(rows: list[dict], chosen: dict | None = None) -> str:
    lines = [
        "| ramp | dry frames changed | dry pooled PSNR vs input | rainy gain | rainy left "
        "alone | faint-rain gain |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mark = " (chosen)" if chosen is not None and r["ramp"] == chosen["ramp"] else ""
        lines.append(
            f"| {r['ramp'][0]:g}-{r['ramp'][1]:g}{mark} | {r['dry_changed']:.1%} | "
            f"{r['dry_pooled_psnr']:.1f} dB | {r['rainy_gain_db']:+.2f} dB | "
            f"{r['rainy_untouched']:.1%} | {r['faint_gain_db']:+.2f} dB |"
        )
    return "\n".join(lines)
