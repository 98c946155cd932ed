"""The one place ``auto`` becomes a device, and where a requested device is checked."""

from __future__ import annotations

import re

from pipeline.errors import UsageError

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(requested: str) -> None:
    """Refuse a device name torch would not know (no torch import)."""
    if not _DEVICE.match(str(requested)):
        raise UsageError(f"device {requested!r}: give auto, cpu, cuda or cuda:N")


def check_device_available(requested: str) -> None:
    """Refuse a device this machine does not have (``cuda`` without a CUDA GPU, ``cuda:3`` on
    a two-GPU machine, ``mps`` off Apple silicon). Only meaningful where the workers run."""
    check_device_name(requested)
    if requested in ("auto", "cpu"):
        return
    import torch

    if requested == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError("device 'mps': not available on this machine; use cpu or auto")
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(requested.split(":")[1]) if ":" in requested else 0
    if count == 0:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise UsageError(
            f"device {requested!r}: torch sees no CUDA GPU here (torch {torch.__version__}, "
            f"{build}); use --device cpu or auto"
        )
    if index >= count:
        raise UsageError(f"device {requested!r}: this machine has {count} CUDA GPU(s)")


def resolve_device(requested: str = "auto") -> str:
    """``auto``: ``cuda`` when torch sees a GPU, else ``cpu``; anything else as given."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
