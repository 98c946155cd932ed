"""Tiled inference: frames above a pixel budget run as overlapping tiles with blended seams.

J4R-Net is fully convolutional, so a tile is just a smaller frame. Each tile *position* keeps
its own recurrent memory across frames (the caller holds the memories, one per tile, in any
mutable sequence: a list, or a store that spills them to disk), so a tiled clip streams in
chunks exactly like an untiled one: tiled chunked == tiled in one pass, bit for bit.

Why the overlap: a tile's border sees zero padding where the whole frame has real content.
One step's receptive field is about 20 px, and through the memory it grows by a few pixels
every frame, with an influence that decays as the memory forgets. Neighbouring tiles therefore
overlap by ``overlap`` pixels; in that band the outer quarter on each side is discarded (it is
the part nearest a tile edge) and the middle half is blended with a linear ramp. The weights
of the tiles covering a pixel sum to 1 (a partition of unity), so a flat region stays flat.

Layouts: ``frame_hw3_u8`` is one RGB frame ``(h, w, 3)`` uint8 (a torch tensor on the CPU);
luma and memories are ``(1, ·, h, w)`` float.
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from j4r.arch import lay_veil, lift_veil, presence_scale
from j4r.color import CHROMA_FILL_ALIGN, CHROMA_FILL_REACH, rgb_to_ycbcr, with_luma

ALPHA_BINS = 4096  # histogram of P(α = 1) per tiled frame, for its 95th percentile


@dataclass(frozen=True)
class Span:
    """One tile's extent along an axis: the window it reads, the core it owns (for
    statistics: every pixel belongs to exactly one core) and its blend weights."""

    start: int
    stop: int
    core_start: int
    core_stop: int
    weights: tuple[float, ...]  # len == stop - start

    @property
    def size(self) -> int:
        return self.stop - self.start


def _tile_length(length: int, count: int, overlap: int) -> int:
    return length if count == 1 else math.ceil((length + (count - 1) * overlap) / count)


def _ramp(width: int) -> list[float]:
    """Weight of the later tile across an overlap of ``width`` px: 0 over the first quarter,
    a linear rise over the middle half, 1 over the last quarter."""
    margin = width // 4
    inner = max(1, width - 2 * margin)
    return [min(1.0, max(0.0, (k + 0.5 - margin) / inner)) for k in range(width)]


def plan_spans(length: int, count: int, overlap: int) -> list[Span]:
    """``count`` windows of equal size covering ``[0, length)``, neighbours ``overlap`` apart."""
    size = _tile_length(length, count, overlap)
    if count == 1:
        return [Span(0, length, 0, length, (1.0,) * length)]
    starts = [(i * (length - size)) // (count - 1) for i in range(count)]
    while any(starts[i] + size - starts[i + 1] < overlap for i in range(count - 1)):
        size += 1
        starts = [(i * (length - size)) // (count - 1) for i in range(count)]
    stops = [s + size for s in starts]
    cuts = [0] + [(starts[i + 1] + stops[i]) // 2 for i in range(count - 1)] + [length]
    spans = []
    for i in range(count):
        weights = [1.0] * size
        if i > 0:  # rising ramp over the overlap with the previous tile
            width = stops[i - 1] - starts[i]
            for k, r in enumerate(_ramp(width)):
                weights[k] = r
        if i < count - 1:  # falling ramp over the overlap with the next tile
            width = stops[i] - starts[i + 1]
            offset = starts[i + 1] - starts[i]
            for k, r in enumerate(_ramp(width)):
                weights[offset + k] = min(weights[offset + k], 1.0 - r)
        spans.append(Span(starts[i], stops[i], cuts[i], cuts[i + 1], tuple(weights)))
    return spans


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one frame size: row spans × column spans, in row-major order."""

    height: int
    width: int
    rows: tuple[Span, ...]
    cols: tuple[Span, ...]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def tiles(self) -> list[tuple[Span, Span]]:
        return [(r, c) for r in self.rows for c in self.cols]

    @property
    def tile_pixels(self) -> int:
        return self.rows[0].size * self.cols[0].size

    @property
    def covered_pixels(self) -> int:
        """Pixels processed per frame, overlaps counted as often as they are processed."""
        return len(self) * self.tile_pixels


def plan_tiles(height: int, width: int, max_pixels: int, overlap: int) -> TileGrid:
    """The fewest-pixel grid of tiles of at most ``max_pixels`` each (one tile if it fits).

    Raises ``ValueError`` when tiles that small cannot hold ``overlap`` on both sides.
    """
    if height * width <= max_pixels:
        rows, cols = plan_spans(height, 1, 0), plan_spans(width, 1, 0)
        return TileGrid(height, width, tuple(rows), tuple(cols))
    best: tuple[int, int, int] | None = None
    for ny in range(1, max(1, height // max(1, overlap)) + 2):
        th = _tile_length(height, ny, overlap)
        if ny > 1 and th < 3 * overlap:
            break
        for nx in range(1, max(1, width // max(1, overlap)) + 2):
            tw = _tile_length(width, nx, overlap)
            if nx > 1 and tw < 3 * overlap:
                break
            if th * tw <= max_pixels:
                cost = ny * nx * th * tw
                if best is None or cost < best[0]:
                    best = (cost, ny, nx)
                break
    if best is None:
        raise ValueError(
            f"tiles of at most {max_pixels} px cannot cover {width}x{height} with an overlap "
            f"of {overlap} px: raise the tile budget or lower the overlap"
        )
    _, ny, nx = best
    rows, cols = plan_spans(height, ny, overlap), plan_spans(width, nx, overlap)
    # plan_spans may widen a tile by a pixel or two to keep the overlap: stay within budget.
    while rows[0].size * cols[0].size > max_pixels and nx < width:
        nx += 1
        cols = plan_spans(width, nx, overlap)
    return TileGrid(height, width, tuple(rows), tuple(cols))


class TiledStats(NamedTuple):
    """Sums over a tiled frame's tile cores (each pixel once), for per-frame statistics."""

    pixels: int
    alpha_sum: float  # Σ P(α = 1)
    alpha_over_half: int  # pixels with P(α = 1) > 0.5
    alpha_hist: torch.Tensor  # ALPHA_BINS counts of P(α = 1) over [0, 1]
    streak_abs_sum: float  # Σ |Ŝ|
    change_sum: float  # Σ |B̂ − O| on luma
    rain_probability: float = 1.0  # σ of the frame's presence logit (1: no presence head)

    def alpha_quantile(self, q: float) -> float:
        """Approximate quantile (to 1 / ALPHA_BINS) with :func:`torch.kthvalue`'s rank."""
        k = max(1, round(q * self.pixels))
        index = int(torch.searchsorted(self.alpha_hist.cumsum(0), torch.tensor(float(k))))
        return (min(index, ALPHA_BINS - 1) + 0.5) / ALPHA_BINS


StepFn = Callable[[torch.Tensor, torch.Tensor | None], tuple]


def _core_share(rows: Span, cols: Span, height: int, width: int) -> float:
    """The share of the frame a tile's core covers (each pixel is in one core)."""
    core = (rows.core_stop - rows.core_start) * (cols.core_stop - cols.core_start)
    return core / (height * width)


def derain_tiled_frame(
    step: StepFn,
    frame_hw3_u8: torch.Tensor,
    grid: TileGrid,
    memories: MutableSequence,
    *,
    presence_ramp: tuple[float, float],
    chroma_fill: bool,
    device: str | torch.device = "cpu",
    band_rows: int = 256,
) -> tuple[torch.Tensor, TiledStats]:
    """De-rain one frame tile by tile; ``memories[i]`` is tile ``i``'s memory (None: empty)
    and is replaced by its new memory. Returns the RGB frame ``(h, w, 3)`` uint8 and stats.

    ``step(rgb (1, 3, th, tw), memory) -> (rgb, StepOutput, memory)`` is
    :func:`j4r.model.derain_rgb_step` bound to a model (or anything that behaves like it).
    Only the blended luma is held for the whole frame (4 bytes a pixel); the colour
    conversion back to RGB runs in bands of ``band_rows`` rows.

    Rain presence (networks with a presence head) is decided for the whole frame, not per
    tile: the tiles' local outputs are blended, their presence logits averaged with their
    cores' share of the frame as weights (the head is affine in mean-pooled evidence, so this
    is the whole frame's logit up to the evidence near tile edges), and the frame's scale
    (:func:`j4r.arch.presence_scale` with the network's ``presence_ramp``) is applied once to
    the blend. A veil head's estimate (:class:`j4r.arch.VeilHead`, built the same way) is the
    frame's too: each tile's veil is laid back on its local output before the blend, and the
    frame's, from the tiles' logits averaged likewise, is lifted from the blend.
    ``presence_ramp`` and ``chroma_fill`` (the network's: chroma restored where
    the luma changed, :func:`j4r.color.fill_chroma`, on bands with enough rows above and below
    to come out as in the whole frame) have no default on purpose: the step hands back
    logits, not the model, and a caller that left them out would finish tiled frames unlike
    whole ones.
    """
    h, w, _ = frame_hw3_u8.shape
    if (h, w) != (grid.height, grid.width):
        raise ValueError(f"frame {w}x{h} does not match the tile grid {grid.width}x{grid.height}")
    if len(memories) != len(grid):
        raise ValueError(f"{len(memories)} memories for {len(grid)} tiles")
    luma = torch.zeros(h, w)
    hist = torch.zeros(ALPHA_BINS, dtype=torch.float64)
    alpha_sum = streak_sum = change_sum = presence_logit = 0.0
    veil_logits: torch.Tensor | None = None  # the frame's, summed over tiles (veil heads)
    over_half = 0
    for index, (rows, cols) in enumerate(grid.tiles):
        crop = frame_hw3_u8[rows.start : rows.stop, cols.start : cols.stop]
        rgb = crop.to(device).permute(2, 0, 1)[None].float().div_(255.0)
        _, out, memory = step(rgb, memories[index])
        memories[index] = memory
        # Before the presence scale, which is the frame's (applied below), not this tile's.
        background = out.local_background.float()
        core_share = _core_share(rows, cols, h, w)
        if out.veil_logits.shape[-1]:  # the tile's own veil back on; the frame's lifted below
            tile_veil = out.veil_logits.float()
            background = lay_veil(background, tile_veil)
            veil_logits = core_share * tile_veil + (0.0 if veil_logits is None else veil_logits)
        else:
            background = background.clamp(0.0, 1.0)
        background = background[0, 0].cpu()
        weight = torch.tensor(rows.weights)[:, None] * torch.tensor(cols.weights)[None, :]
        luma[rows.start : rows.stop, cols.start : cols.stop] += background * weight
        # Statistics over the core only (each pixel counted once).
        ys = slice(rows.core_start - rows.start, rows.core_stop - rows.start)
        xs = slice(cols.core_start - cols.start, cols.core_stop - cols.start)
        prob = torch.softmax(out.alpha_logits.float(), dim=1)[0, 1, ys, xs].cpu()
        alpha_sum += float(prob.sum(dtype=torch.float64))
        over_half += int((prob > 0.5).sum())
        hist += torch.histc(prob.flatten(), bins=ALPHA_BINS, min=0.0, max=1.0).double()
        streak_sum += float(out.streaks[0, 0, ys, xs].float().abs().sum(dtype=torch.float64))
        input_luma = rgb_to_ycbcr(rgb[0, :, ys, xs])[0].cpu()
        if veil_logits is None:  # with a veil, the change is the frame's: counted below
            change_sum += float((background[ys, xs] - input_luma).abs().sum(dtype=torch.float64))
        presence_logit += core_share * float(out.presence_logits.float().flatten()[0])
        # Let this tile's memory and outputs go before the next tile's step allocates its own.
        del memory, out, rgb, background, prob, input_luma
    if veil_logits is not None:
        luma = lift_veil(luma[None, None], veil_logits.cpu())[0, 0].clamp_(0.0, 1.0)
    frame_logit = torch.tensor(presence_logit)  # fp32, like a step
    rain_probability = float(torch.sigmoid(frame_logit))
    scale = float(presence_scale(frame_logit, presence_ramp))
    out_hw3 = torch.empty_like(frame_hw3_u8)
    reach = CHROMA_FILL_REACH if chroma_fill else 0
    for top in range(0, h, band_rows):
        lo = max(0, top - reach) // CHROMA_FILL_ALIGN * CHROMA_FILL_ALIGN
        hi = min(h, top + band_rows + reach)
        band = frame_hw3_u8[lo:hi].permute(2, 0, 1).float().div_(255.0)
        ycbcr = rgb_to_ycbcr(band)
        local = luma[None, lo:hi]
        if veil_logits is not None:
            own = slice(top - lo, top - lo + band_rows)  # the band's rows, not its margins
            change_sum += float((local[:, own] - ycbcr[:1, own]).abs().sum(dtype=torch.float64))
        if scale < 1.0:  # O + s (B̂_local − O); s == 1 keeps gate-less nets exact
            local = ycbcr[:1] + scale * (local - ycbcr[:1])
        rgb = with_luma(ycbcr, local, chroma_fill=chroma_fill)[:, top - lo : top - lo + band_rows]
        out_hw3[top : top + band_rows] = (
            rgb.clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(1, 2, 0)
        )
    change_sum *= scale  # the change is linear in the scale
    stats = TiledStats(h * w, alpha_sum, over_half, hist, streak_sum, change_sum, rain_probability)
    return out_hw3, stats
