"""Shared fixtures. State stays out of the home folder; threads stay within the 2-core budget."""

from __future__ import annotations

import logging
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

logging.getLogger("werkzeug").setLevel(logging.WARNING)
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
# Prefect keeps its database and settings here, not in the home folder (read at import time).
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="derain-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DERAIN_MODEL_CACHE", tempfile.mkdtemp(prefix="derain-models-"))


def moving_frames_thwc_u8(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth textured scene panning right with a few bright streak-like lines."""
    rng = np.random.default_rng(seed)
    base = rng.random((height // 4 + 2, (width + frames * 2) // 4 + 2, 3))
    big = np.kron(base, np.ones((4, 4, 1)))[:height, : width + frames * 2]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        frame = big[:, 2 * t : 2 * t + width].copy()
        cols = rng.integers(0, width, 6)
        frame[:, cols] = 0.95
        out[t] = (frame * 255).astype(np.uint8)
    return out


def write_video(
    path: Path,
    frames_thwc_u8: np.ndarray,
    *,
    fps: Fraction | int = 25,
    codec: str = "ffv1",
    audio_seconds: float = 0.0,
) -> Path:
    """Encode test frames (and, if asked, a 440 Hz AAC tone) with PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {"ffv1": "matroska", "libx264": "mp4", "mpeg4": "avi"}[codec]
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = frames_thwc_u8.shape[2], frames_thwc_u8.shape[1]
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        audio = container.add_stream("aac", rate=44100) if audio_seconds else None
        for rgb in frames_thwc_u8:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
        if audio is not None:
            t = np.arange(int(44100 * audio_seconds)) / 44100
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, len(tone), 1024):
                block = tone[None, start : start + 1024]
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
                frame.sample_rate = 44100
                container.mux(audio.encode(frame))
            container.mux(audio.encode(None))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised tiny J4R-Net saved as a checkpoint (fast for pipeline tests)."""
    import torch

    from j4r.checkpoint import save_checkpoint
    from j4r.config import net_config
    from j4r.model import build_model

    torch.manual_seed(0)
    net = net_config("tiny")
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(build_model(net), folder, name="j4r-tiny", version="test", net=net)
    return folder


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint: moto's server on 127.0.0.1, spoken to over HTTP through s3fs."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, request):
    """An s3fs filesystem, a fresh bucket, and the storage options that reach it."""
    import re

    import s3fs

    options = {"endpoint_url": s3_endpoint}
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    fs.mkdir(bucket)
    fs.invalidate_cache()
    return fs, bucket, options


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """A real local Ray for the whole session (tests run inside `unshare --net`)."""
    ray = pytest.importorskip("ray")
    import logging

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    """A throw-away Prefect API (temporary database) for flows run in tests (~9 s, once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):  # slow when the 2 cores are busy
        yield
