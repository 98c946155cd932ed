"""Image quality metrics, the one place PSNR and SSIM are computed (SSIM from scikit-image).

Inputs are tensors or arrays of one image ``(c, h, w)`` (tensors) with values on the scale
``data_range`` (1.0 for float images in [0, 1], 255 for 8-bit). PSNR of identical images is
capped at 120 dB (an MSE floor of 1e-12 on the unit scale) so averages stay finite.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MSE_FLOOR = 1e-12  # on the unit scale: identical images score 120 dB, not infinity


def _as_float64(image: Any) -> np.ndarray:
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy()
    return np.asarray(image, dtype=np.float64)


def mse(prediction: Any, target: Any, *, data_range: float = 1.0) -> float:
    """Mean squared error on the unit scale (values divided by ``data_range``)."""
    diff = (_as_float64(prediction) - _as_float64(target)) / data_range
    return float(np.mean(diff * diff))


def psnr_from_mse(unit_mse: float) -> float:
    """PSNR in dB of a mean squared error on the unit scale."""
    return 10 * math.log10(1.0 / max(unit_mse, MSE_FLOOR))


def psnr(prediction: Any, target: Any, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB."""
    return psnr_from_mse(mse(prediction, target, data_range=data_range))


def ssim(prediction: Any, target: Any, *, data_range: float = 1.0) -> float:
    """Structural similarity of two ``(c, h, w)`` images (Gaussian-free 7x7 windows, skimage)."""
    from skimage.metrics import structural_similarity

    a = np.moveaxis(_as_float64(prediction), 0, -1)
    b = np.moveaxis(_as_float64(target), 0, -1)
    return float(structural_similarity(a, b, data_range=data_range, channel_axis=2))
