"""Numeric precision: where bf16 is fast and safe, and the autocast context that uses it.

``auto`` picks bf16 on CUDA devices that support it and on CPUs with AMX (their bf16 matmul and
convolution run several times faster than fp32), and fp32 everywhere else. AVX512-BF16 alone
does not pay: measured on a 2-core Intel Xeon with it and without AMX (``derain bench``,
2026-12-07), bf16 ran the model at 0.85x fp32's frames/s and its matmul ceiling was 165
against 269 GFLOP/s.
Weights, optimizer state and the recurrent memory between frames stay fp32: autocast only
lowers the precision inside each convolution.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

PRECISIONS = ("auto", "fp32", "bf16")
CPU_BF16_FLAGS = ("amx_bf16",)  # avx512_bf16 alone measured slower than fp32 (see above)


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has AMX-BF16 units (read once from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return any(flag in flags for flag in CPU_BF16_FLAGS)
    return False


def resolve_precision(requested: str, device_type: str) -> str:
    """``auto``/``fp32``/``bf16`` on a device type (``cpu``, ``cuda``) -> ``fp32`` or ``bf16``."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if device_type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device_type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision (a no-op for fp32)."""
    import torch

    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
