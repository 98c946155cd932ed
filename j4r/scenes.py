"""Training scenes: what a de-raining net must learn to leave alone, drawn into clean content.

Rain looks like thin, bright, roughly vertical lines. So do poles, wires, fences, window rows
and text, and a net that never saw them in training erases them. Objects that move on their
own (people, cars) look like occlusions to a recurrent net that has only seen camera motion,
and it fills them from memory (ghosts). This module draws both kinds of content into the clean
training clips; the rain goes on top, so the target keeps them.

Used by training only (:mod:`j4r.data`). The evaluation sets draw their provoking scenes with
code of their own (:mod:`j4r.evalsets`), so that the two never share a renderer.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from j4r.motion import CameraPath, render_path

SUPERSAMPLE = 3  # structures are drawn at 3x and area-averaged down: anti-aliased edges
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype"))


@functools.lru_cache(maxsize=1)
def _font_paths() -> tuple[str, ...]:
    found: list[str] = []
    for folder in FONT_DIRS:
        if folder.is_dir():
            found += sorted(str(p) for p in folder.rglob("*.ttf"))
    return tuple(found)


def _font(rng: np.random.Generator, size: int):
    from PIL import ImageFont

    paths = _font_paths()
    if paths:
        return ImageFont.truetype(paths[int(rng.integers(len(paths)))], size)
    return ImageFont.load_default(size=size)


def _tone(rng: np.random.Generator, background: float) -> float:
    """A structure's grey level: mostly bright (the hard case), sometimes dark."""
    if rng.random() < 0.7:
        return float(np.clip(background + rng.uniform(0.2, 0.7), 0.35, 1.0))
    return float(np.clip(background - rng.uniform(0.15, 0.6), 0.0, 0.7))


def draw_structures(rng: np.random.Generator, canvas_hw: torch.Tensor) -> torch.Tensor:
    """Draw 1-4 static structures (poles, wires, fence, window grid, text) onto a luma canvas.

    ``canvas_hw`` is ``(h, w)`` in [0, 1]; returns a new tensor of the same shape.
    """
    from PIL import Image, ImageDraw

    h, w = canvas_hw.shape
    s = SUPERSAMPLE
    value = Image.new("L", (w * s, h * s), 0)
    cover = Image.new("L", (w * s, h * s), 0)
    draw_v, draw_c = ImageDraw.Draw(value), ImageDraw.Draw(cover)
    mean = float(canvas_hw.mean())

    def paint(shape: str, coords, tone: float, **kw) -> None:
        getattr(draw_v, shape)(coords, fill=int(tone * 255), **kw)
        getattr(draw_c, shape)(coords, fill=255, **kw)

    for _ in range(int(rng.integers(1, 5))):
        kind = rng.choice(
            ["pole", "wire", "fence", "windows", "text"], p=[0.25, 0.2, 0.15, 0.2, 0.2]
        )
        tone = _tone(rng, mean)
        if kind == "pole":  # near-vertical bars 1-20 px wide: the classic false streak
            width = rng.uniform(1, 20) * s
            x = rng.uniform(0, w) * s
            lean = rng.uniform(-0.25, 0.25) * h * s
            paint("line", [(x, 0), (x + lean, h * s)], tone, width=max(1, round(width)))
        elif kind == "wire":  # thin sagging or straight lines at any angle
            width = max(1, round(rng.uniform(0.7, 3) * s))
            y0, y1 = rng.uniform(0, h, 2) * s
            sag = rng.uniform(-0.2, 0.3) * h * s
            xs = np.linspace(0, w * s, 24)
            ys = y0 + (y1 - y0) * xs / (w * s) + sag * (1 - ((2 * xs / (w * s)) - 1) ** 2)
            if rng.random() < 0.4:  # steep wires and cables, close to the rain's direction
                xs, ys = ys * w / h, xs * h / w
            paint("line", list(zip(xs.tolist(), ys.tolist(), strict=True)), tone, width=width)
        elif kind == "fence":  # a lattice of thin bars
            pitch = rng.uniform(4, 18) * s
            width = max(1, round(rng.uniform(0.8, 3) * s))
            angle = rng.uniform(-0.3, 0.3)
            for k in range(-2, int(w * s / pitch) + 3):
                x = k * pitch
                paint("line", [(x, 0), (x + angle * h * s, h * s)], tone, width=width)
            if rng.random() < 0.6:
                for _ in range(int(rng.integers(1, 4))):
                    y = rng.uniform(0, h) * s
                    paint("line", [(0, y), (w * s, y + rng.uniform(-5, 5) * s)], tone, width=width)
        elif kind == "windows":  # rows of lit windows (bright on dark at night)
            cell_w, cell_h = rng.uniform(5, 22) * s, rng.uniform(6, 26) * s
            fill_w, fill_h = rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.8)
            x0, y0 = rng.uniform(-cell_w, 0), rng.uniform(-cell_h, 0)
            lit = rng.uniform(0.4, 1.0)
            for gy in range(int(h * s / cell_h) + 2):
                for gx in range(int(w * s / cell_w) + 2):
                    if rng.random() > lit:
                        continue
                    x, y = x0 + gx * cell_w, y0 + gy * cell_h
                    shade = float(np.clip(tone + rng.normal(0, 0.08), 0, 1))
                    paint("rectangle", [x, y, x + fill_w * cell_w, y + fill_h * cell_h], shade)
        else:  # text: signs, captions, time stamps
            size = int(rng.uniform(6, 28) * s)
            chars = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789:-/ "
            text = "".join(rng.choice(list(chars), int(rng.integers(3, 14))))
            x, y = rng.uniform(-0.2, 0.8) * w * s, rng.uniform(0, 0.9) * h * s
            font = _font(rng, size)
            draw_v.text((x, y), text, fill=int(tone * 255), font=font)
            draw_c.text((x, y), text, fill=255, font=font)
    value_t = torch.from_numpy(np.asarray(value, dtype=np.float32) / 255.0)[None, None]
    cover_t = torch.from_numpy(np.asarray(cover, dtype=np.float32) / 255.0)[None, None]
    value_t = F.avg_pool2d(value_t * cover_t, s)[0, 0]
    cover_t = F.avg_pool2d(cover_t, s)[0, 0]
    return canvas_hw * (1 - cover_t) + value_t


def add_sprites(
    rng: np.random.Generator, clip_t1hw: torch.Tensor, donors: list[torch.Tensor]
) -> torch.Tensor:
    """Composite 1-3 objects that move independently of the camera over a clean luma clip.

    Each object is a patch of a donor photo with a soft mask (ellipse, upright capsule like a
    walker, or a wide box like a car) crossing the clip at its own speed of 0.5-6 px/frame.
    """
    t, _, h, w = clip_t1hw.shape
    out = clip_t1hw.clone()
    for _ in range(int(rng.integers(1, 4))):
        donor = donors[int(rng.integers(len(donors)))]
        shape = rng.choice(["ellipse", "walker", "car"])
        if shape == "walker":
            sh, sw = rng.uniform(0.3, 0.9) * h, rng.uniform(0.08, 0.25) * w
        elif shape == "car":
            sh, sw = rng.uniform(0.12, 0.35) * h, rng.uniform(0.3, 0.8) * w
        else:
            sh = sw = rng.uniform(0.1, 0.5) * min(h, w)
        sh, sw = max(4, int(sh)), max(4, int(sw))
        dh, dw = donor.shape[-2:]
        if dh <= sh or dw <= sw:
            continue
        top, left = int(rng.integers(0, dh - sh)), int(rng.integers(0, dw - sw))
        patch = donor[:, top : top + sh, left : left + sw]
        patch = (patch * rng.uniform(0.6, 1.3) + rng.uniform(-0.15, 0.15)).clamp(0, 1)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, sh), torch.linspace(-1, 1, sw), indexing="ij")
        if shape == "ellipse":
            dist = torch.sqrt(yy**2 + xx**2)
        elif shape == "walker":
            dist = torch.sqrt((yy.abs() - 0.6).clamp(min=0) ** 2 / 0.16 + xx**2)
        else:
            dist = torch.maximum(yy.abs(), xx.abs() ** 4)
        mask = ((1 - dist) * 6).clamp(0, 1)
        speed = rng.uniform(0.5, 6.0)
        heading = rng.uniform(0, 2 * math.pi) if shape == "ellipse" else rng.choice([0, math.pi])
        velocity = (speed * math.sin(heading) * (shape == "ellipse"), speed * math.cos(heading))
        travel = (abs(velocity[0]) * t + 2, abs(velocity[1]) * t + 2)
        pad_h, pad_w = h + 2 * int(travel[0]) + sh, w + 2 * int(travel[1]) + sw
        layer = torch.zeros(2, pad_h, pad_w)
        y0 = int(rng.integers(0, pad_h - sh))
        x0 = int(rng.integers(0, pad_w - sw))
        layer[0, y0 : y0 + sh, x0 : x0 + sw] = patch[0] * mask
        layer[1, y0 : y0 + sh, x0 : x0 + sw] = mask
        # The object moves by +velocity: the sampling window moves by -velocity.
        path = CameraPath(pan_px=(-velocity[0], -velocity[1]), zoom=0.0, rotate_deg=0.0)
        centre = (pad_h / 2 + velocity[0] * t / 2, pad_w / 2 + velocity[1] * t / 2)
        frames = render_path(layer, path, frames=t, height=h, width=w, centre_yx=centre)
        premultiplied, cover = frames[:, :1], frames[:, 1:].clamp(0, 1)
        out = out * (1 - cover) + premultiplied
    return out.clamp(0, 1)
