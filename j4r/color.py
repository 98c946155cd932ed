"""Colour conversions: full-range BT.601 YCbCr (JPEG), the space the network works in.

J4R-Net sees luma only; chroma passes through from the input frame, as in the authors' code.
"""

from __future__ import annotations

import torch

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


def with_luma(ycbcr: torch.Tensor, luma: torch.Tensor) -> torch.Tensor:
    """RGB frames with Y from ``luma`` and CbCr from ``ycbcr`` (chroma pass-through)."""
    return ycbcr_to_rgb(torch.cat([luma, ycbcr[..., 1:, :, :]], dim=-3))
