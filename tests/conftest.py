"""Shared fixtures. State stays out of the home folder; threads stay within the 2-core budget.

The environment is set in :func:`pytest_configure` (before any test module is imported, so
before torch, Prefect and Ray read it) and restored in :func:`pytest_unconfigure`; nothing is
set at import time. Test data helpers live in ``tests/helpers.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_saved_environment: dict[str, str | None] = {}
_temp_dirs: list[str] = []


def _set_default(name: str, value: str) -> None:
    if name not in os.environ:
        _saved_environment[name] = None
        os.environ[name] = value


def _temp_dir(prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=prefix)
    _temp_dirs.append(path)
    return path


def pytest_configure(config) -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    _set_default("OMP_NUM_THREADS", "2")
    _set_default("RAY_USAGE_STATS_ENABLED", "0")
    _set_default("AWS_ACCESS_KEY_ID", "testing")
    _set_default("AWS_SECRET_ACCESS_KEY", "testing")
    _set_default("AWS_DEFAULT_REGION", "us-east-1")
    _set_default("AWS_EC2_METADATA_DISABLED", "true")
    # Prefect keeps its database and settings here, not in the home folder (read on import).
    if "PREFECT_HOME" not in os.environ:
        _set_default("PREFECT_HOME", _temp_dir("derain-prefect-home-"))
    _set_default("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if "DERAIN_MODEL_CACHE" not in os.environ:
        _set_default("DERAIN_MODEL_CACHE", _temp_dir("derain-models-"))


def pytest_unconfigure(config) -> None:
    for name, value in _saved_environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _saved_environment.clear()
    for path in _temp_dirs:
        shutil.rmtree(path, ignore_errors=True)
    _temp_dirs.clear()


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
