"""The one place ``auto`` becomes a device."""

from __future__ import annotations


def resolve_device(requested: str = "auto") -> str:
    """``auto``: ``cuda`` when torch sees a GPU, else ``cpu``; anything else as given."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
