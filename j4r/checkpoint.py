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

    @property
    def identity(self) -> dict[str, str]:
        """Which weights these are, as records beside derived checkpoints and results keep it."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


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


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (torch's size-mismatch errors span many)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines[:2])[:300] or type(exc).__name__


def read_info(folder: str | Path) -> ModelInfo:
    """The checkpoint's config, checked: every problem is one :class:`CheckpointError` line
    naming the file (not JSON, not an object, a missing key, a bad ``net``)."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG, folder / WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise CheckpointError(
            f"{folder} is not a checkpoint: it needs {CONFIG} and {WEIGHTS} "
            "(train one with `derain train`, or omit --checkpoint for the shipped one)"
        )
    try:
        meta = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({_one_line(exc)})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{config_path}: a JSON {type(meta).__name__}, expected an object with "
            "format_version, name, version and net"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{folder}: unsupported checkpoint format {meta.get('format_version')}"
        )
    for key in ("name", "version", "net"):
        if key not in meta:
            raise CheckpointError(f"{config_path}: no `{key}` (a checkpoint config needs it)")
    if not isinstance(meta["net"], dict):
        raise CheckpointError(f"{config_path}: `net` is not an object")
    try:
        net = from_dict(NetConfig, meta["net"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: bad `net`: {_one_line(exc)}") from exc
    known = {"format_version", "name", "version", "net", "sha256"}
    return ModelInfo(
        name=str(meta["name"]),
        version=str(meta["version"]),
        net=net,
        sha256=meta.get("sha256") or file_sha256(weights_path),
        extra={k: v for k, v in meta.items() if k not in known},
    )


def load_checkpoint(folder: str | Path | None = None, *, device: str = "cpu"):
    """Build the network from ``folder`` (default: the shipped checkpoint) in eval mode.

    Unreadable weights (truncated, random bytes), tensors whose names or shapes do not match
    the config, and weights that differ from the sha256 the config records all raise one
    :class:`CheckpointError` line naming the file.
    """
    from safetensors.torch import load_file

    from j4r.model import build_model

    folder = Path(folder) if folder else DEFAULT_CHECKPOINT
    info = read_info(folder)
    weights_path = folder / WEIGHTS
    model = build_model(info.net)
    try:
        state = load_file(str(weights_path), device="cpu")
    except Exception as exc:  # safetensors' own error type; also OSError
        raise CheckpointError(
            f"{weights_path}: not a readable safetensors file ({_one_line(exc)}); "
            "truncated or not a checkpoint?"
        ) from exc
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # size mismatch
        raise CheckpointError(
            f"{weights_path}: tensor shapes do not match the net in {CONFIG} ({_one_line(exc)})"
        ) from exc
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: weights do not match the config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    recorded = read_recorded_sha256(folder)
    if recorded and recorded != file_sha256(weights_path):
        raise CheckpointError(
            f"{weights_path}: sha256 differs from the one {CONFIG} records: "
            "the weights were changed or damaged after saving"
        )
    return model.to(device).eval(), info


def read_recorded_sha256(folder: Path) -> str | None:
    """The weights' sha256 as ``config.json`` records it (None if it records none)."""
    meta = json.loads((folder / CONFIG).read_text())
    return meta.get("sha256") if isinstance(meta, dict) else None
