"""Checkpoints: a folder with ``model.safetensors`` + ``config.json`` (never a pickle).

``config.json`` holds the network config, the model name and version, and the training record
so that a checkpoint always explains itself. Loading checks the weights against the config.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from j4r.config import NetConfig, from_dict, to_dict

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT_VERSION = 1
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "j4r-small"


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete, or does not match its config."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    net: NetConfig
    sha256: str  # of the weights file: the manifests record it
    extra: dict[str, Any]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    model: Any,
    folder: str | Path,
    *,
    name: str,
    version: str,
    net: NetConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write weights and config atomically (temp files renamed into place)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as fh:
        tmp_weights = Path(fh.name)
    save_file(state, str(tmp_weights), metadata={"name": name, "version": version})
    tmp_weights.chmod(0o644)  # mkstemp makes it private; a checkpoint is meant to be shared
    os.replace(tmp_weights, folder / WEIGHTS)
    meta = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "net": to_dict(net),
        "sha256": file_sha256(folder / WEIGHTS),
        **(extra or {}),
    }
    tmp_config = folder / (CONFIG + ".tmp")
    tmp_config.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_config, folder / CONFIG)
    return folder


def read_info(folder: str | Path) -> ModelInfo:
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG, folder / WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise CheckpointError(
            f"{folder} is not a checkpoint: it needs {CONFIG} and {WEIGHTS} "
            "(train one with `derain train`, or omit --checkpoint for the shipped one)"
        )
    meta = json.loads(config_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{folder}: unsupported checkpoint format {meta.get('format_version')}"
        )
    known = {"format_version", "name", "version", "net", "sha256"}
    return ModelInfo(
        name=meta["name"],
        version=meta["version"],
        net=from_dict(NetConfig, meta["net"]),
        sha256=meta.get("sha256") or file_sha256(weights_path),
        extra={k: v for k, v in meta.items() if k not in known},
    )


def load_checkpoint(folder: str | Path | None = None, *, device: str = "cpu"):
    """Build the network from ``folder`` (default: the shipped checkpoint) in eval mode."""
    from safetensors.torch import load_file

    from j4r.model import build_model

    folder = Path(folder) if folder else DEFAULT_CHECKPOINT
    info = read_info(folder)
    model = build_model(info.net)
    state = load_file(str(folder / WEIGHTS), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: weights do not match the config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model.to(device).eval(), info
