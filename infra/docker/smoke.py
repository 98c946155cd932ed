"""Build-time smoke check of the worker image (also runs in tests/test_infra.py on the dev venv).

Imports what a Ray node and a Prefect worker need (the libraries, and the project's entry
modules: the ``derain`` CLI, the Ray runtime, both flows), encodes a tiny clip with PyAV (H.264 and
FFV1), decodes it with decord and with PyAV, loads the shipped checkpoint and de-rains a few
frames on the CPU. Exits non-zero with a message on the first failure.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from fractions import Fraction
from pathlib import Path


def encode(path: Path, frames, codec: str) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(25))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))


def main() -> int:
    import av
    import decord
    import numpy as np
    import prefect
    import ray
    import torch

    from j4r.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint

    for module in (
        "pipeline.cli.main",
        "pipeline.runtime.ray_runner",
        "flows.archive",
        "flows.train",
    ):
        importlib.import_module(module)  # every room of pipeline/ is installed

    print(
        f"torch {torch.__version__} (cuda build {torch.version.cuda}), ray {ray.__version__}, "
        f"prefect {prefect.__version__}, av {av.__version__}, decord {decord.__version__}"
    )
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 48, 64, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        for codec, name in (("libx264", "clip.mp4"), ("ffv1", "clip.mkv")):
            path = Path(tmp) / name
            encode(path, frames, codec)
            reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
            decoded = reader.get_batch(list(range(len(reader)))).asnumpy()
            if decoded.shape != frames.shape:
                raise SystemExit(f"decord read {decoded.shape} from {name}, wrote {frames.shape}")
            with av.open(str(path)) as container:
                count = sum(1 for _ in container.decode(video=0))
            if count != len(frames):
                raise SystemExit(f"PyAV decoded {count} frames of {name}, wrote {len(frames)}")
            if codec == "ffv1" and not np.array_equal(decoded, frames):
                raise SystemExit("FFV1 did not round-trip bit-exactly through decord")
    model, info = load_checkpoint(DEFAULT_CHECKPOINT, device="cpu")
    clip = torch.rand(1, 3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out, _ = model(clip)
    if tuple(out.background.shape) != tuple(clip.shape):
        raise SystemExit(f"model returned {tuple(out.background.shape)} for {tuple(clip.shape)}")
    print(f"smoke ok: decord + PyAV round trip, checkpoint {info.name} {info.version} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
