"""Colour conversions: full-range BT.601 YCbCr (JPEG), the space the network works in.

J4R-Net sees luma only; chroma passes through from the input frame, as in the authors' code,
unless the network's config asks for :func:`fill_chroma` (beyond the paper).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

_RGB_TO_YCBCR = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
)
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)
_CHROMA_OFFSET = torch.tensor([0.0, 0.5, 0.5])


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """``(..., 3, h, w)`` RGB in [0, 1] -> YCbCr in [0, 1] (chroma centred on 0.5)."""
    matrix = _RGB_TO_YCBCR.to(rgb)
    out = torch.einsum("ij,...jhw->...ihw", matrix, rgb)
    return out + _CHROMA_OFFSET.to(rgb).view(3, 1, 1)


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr`, clamped to [0, 1]."""
    matrix = _YCBCR_TO_RGB.to(ycbcr)
    centred = ycbcr - _CHROMA_OFFSET.to(ycbcr).view(3, 1, 1)
    return torch.einsum("ij,...jhw->...ihw", matrix, centred).clamp(0.0, 1.0)


def rgb_to_luma(rgb: torch.Tensor) -> torch.Tensor:
    """``(..., 3, h, w)`` -> ``(..., 1, h, w)``."""
    weights = _RGB_TO_YCBCR[0].to(rgb).view(3, 1, 1)
    return (rgb * weights).sum(dim=-3, keepdim=True)


def with_luma(
    ycbcr: torch.Tensor, luma: torch.Tensor, *, chroma_fill: bool = False
) -> torch.Tensor:
    """RGB frames with Y from ``luma`` and CbCr from ``ycbcr`` (chroma pass-through), or, with
    ``chroma_fill``, chroma restored where the luma changed (:func:`fill_chroma`)."""
    if chroma_fill:
        return ycbcr_to_rgb(fill_chroma(ycbcr, luma))
    return ycbcr_to_rgb(torch.cat([luma, ycbcr[..., 1:, :, :]], dim=-3))


# Chosen on validation clips of training content (never the evaluation sets): the luma change
# at which a pixel's own chroma is trusted e^-1 as much as an untouched pixel's, the
# neighbourhoods chroma is drawn from, narrowest first (Gaussian width in px, and the grid
# they are blurred on: wide ones on a coarser one, which costs a fraction of the time), the
# share of trusted weight under which a neighbourhood hands over to the next wider one, and the
# luma difference between a pixel's output and its trusted neighbours' at which it takes e^-1
# of their colour.
CHROMA_TRUST_CHANGE = 0.06
CHROMA_FILL_SCALES = ((2.0, 1), (6.0, 2), (18.0, 6))  # (sigma px, pooling factor)
CHROMA_FILL_ENOUGH = 0.1
CHROMA_MATCH_LUMA = 0.1
# How much more colourful (chroma magnitude) the neighbours must be for their colour to be
# taken in full; from none at equal colourfulness, linearly (about 5 8-bit levels).
CHROMA_COLOUR_RAMP = 0.02
# A band of rows processed on its own comes out as the same rows of the whole frame when it
# starts on a multiple of CHROMA_FILL_ALIGN rows (the coarse grids line up) and has
# CHROMA_FILL_REACH more rows on each side (Gaussian radius, pooling and interpolation).
CHROMA_FILL_ALIGN = math.lcm(*(factor for _, factor in CHROMA_FILL_SCALES))
CHROMA_FILL_REACH = max(math.ceil(3 * sigma / f) * f + 2 * f for sigma, f in CHROMA_FILL_SCALES)


def _gaussian(planes: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of each plane of ``(b, c, h, w)``, edges replicated."""
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=planes.dtype, device=planes.device)
    taps = torch.exp(-0.5 * (taps / sigma) ** 2)
    taps = taps / taps.sum()
    c = planes.shape[1]
    # Depthwise in channels_last: measured 3-10x faster on CPU than one plane at a time.
    out = planes.contiguous(memory_format=torch.channels_last)
    out = F.pad(out, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _blur(planes: torch.Tensor, sigma: float, factor: int) -> torch.Tensor:
    """:func:`_gaussian` of ``sigma`` px computed on a grid ``factor`` times coarser (area
    pooling, bilinear back up); the same shape out."""
    if factor == 1:
        return _gaussian(planes, sigma)
    h, w = planes.shape[-2:]
    padded = F.pad(planes, (0, -w % factor, 0, -h % factor), mode="replicate")
    coarse = _gaussian(F.avg_pool2d(padded, factor), sigma / factor)
    fine = F.interpolate(coarse, scale_factor=factor, mode="bilinear", align_corners=False)
    return fine[..., :h, :w]


def fill_chroma(ycbcr: torch.Tensor, luma: torch.Tensor) -> torch.Tensor:
    """YCbCr ``(..., 3, h, w)`` with Y replaced by ``luma (..., 1, h, w)`` and, where that changed
    the luma, chroma drawn from the neighbours whose luma did not change.

    Why: rain is near-neutral. A streak added to a picture leaves its chroma as it was, but a
    drop that hides the background (α = 1), a streak that blends toward refracted light, a
    haze, and a streak clipped at white all pull chroma toward grey, so a pass-through leaves
    grey blots where the network restored the luma under them (the fill wins back 0.5 dB RGB
    PSNR on the project's heavy rain). Each pixel's chroma is trusted ``exp(-(ΔY / 0.06)²)``,
    with ``ΔY`` its luma change; the untrusted share is replaced by the trust-weighted mean
    chroma of its neighbourhood (normalised convolution, widening from 2 to 18 px where too few
    neighbours are trusted), but only as far as that mean is more colourful than the pixel
    itself (in full from 0.02 more), since rain takes colour away and never adds it, and as far
    as the pixel's new luma matches its trusted neighbours' (``exp(-(ΔY / 0.1)²)``): a drop
    whose luma the network restored takes the colour around it, a white pole the network
    dimmed by mistake is not painted with the flowers behind it. A frame whose luma did not
    change comes out bit for bit as it went in, and so does every pixel whose luma did not.
    Values in [0, 1], chroma centred on 0.5.
    """
    shape = ycbcr.shape
    ycbcr, luma = ycbcr.reshape(-1, 3, *shape[-2:]), luma.reshape(-1, 1, *shape[-2:])
    # One frame at a time: a frame comes out the same whichever batch it ran in (convolution
    # kernels pick their algorithm by batch size, and a rounding flip shows in 8 bits).
    frames = [_fill_frame(ycbcr[i : i + 1], luma[i : i + 1]) for i in range(len(ycbcr))]
    return torch.cat(frames).reshape(shape)


def _magnitude(chroma: torch.Tensor) -> torch.Tensor:
    """``|(Cb, Cr)|`` of ``(1, 2, h, w)`` centred chroma (written out: ``norm`` over a
    channels_last dim measured 10x slower)."""
    return (chroma[:, :1] ** 2 + chroma[:, 1:] ** 2).sqrt()


def _fill_frame(ycbcr: torch.Tensor, luma: torch.Tensor) -> torch.Tensor:
    """:func:`fill_chroma` of one frame, ``(1, 3, h, w)`` and ``(1, 1, h, w)``."""
    input_luma, chroma = ycbcr[:, :1], ycbcr[:, 1:] - 0.5
    if torch.equal(luma, input_luma):
        return torch.cat([luma, ycbcr[:, 1:]], dim=1)
    trust = torch.exp(-(((luma - input_luma) / CHROMA_TRUST_CHANGE) ** 2))
    # Trusted neighbours' chroma (2 planes) and output luma (1), and their weight (1).
    weighted = torch.cat([trust * chroma, trust * luma, trust], dim=1)
    # Narrowest neighbourhood first; a wider one takes over as the narrower one's trusted weight
    # falls under CHROMA_FILL_ENOUGH. Every step is smooth, so a small change of the luma
    # output (the next frame, a segment's warm-up) moves the colour a little: a hard switch
    # would make it jump.
    filled, remaining = 0.0, torch.ones_like(trust)
    for index, (sigma, factor) in enumerate(CHROMA_FILL_SCALES):
        blurred = _blur(weighted, sigma, factor)
        support = blurred[:, 3:]
        estimate = blurred[:, :3] / support.clamp_min(1e-6)
        last = index == len(CHROMA_FILL_SCALES) - 1
        take = remaining if last else remaining * (support / CHROMA_FILL_ENOUGH).clamp(max=1.0)
        filled = filled + take * estimate
        remaining = remaining - take
    filled, neighbour_luma = filled[:, :2], filled[:, 2:]
    colour_gained = _magnitude(filled) - _magnitude(chroma)
    more_colourful = (colour_gained / CHROMA_COLOUR_RAMP).clamp(0.0, 1.0)
    match = torch.exp(-(((luma - neighbour_luma) / CHROMA_MATCH_LUMA) ** 2))
    share = (1.0 - trust) * match * more_colourful
    restored = torch.where(share > 0, chroma + share * (filled - chroma) + 0.5, ycbcr[:, 1:])
    return torch.cat([luma, restored], dim=1)
