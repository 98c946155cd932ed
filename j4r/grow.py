"""Grow a trained network deeper without changing what it computes.

Extra residual pairs are appended to R-Net, C-Net and JRC-Net with both convolutions set to the
identity kernel and zero bias. Every body in this network is fed by a ReLU, so its input is
never negative, and a pair computes ``0.5 x + 0.5 relu(conv2(relu(conv1(x))))`` = ``x`` there:
the grown network's outputs equal its parent's (up to rounding), and fine-tuning starts from
the parent's quality with more depth (a wider view and more capacity) to learn with.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from j4r.checkpoint import load_checkpoint

# NetConfig field -> the sub-network whose ``body`` holds that many residual pairs.
GROWABLE = {"rnet_blocks": "rnet", "cnet_blocks": "cnet", "jrc_blocks": "jrc"}


def _identity_pair_(pair: nn.Module) -> None:
    with torch.no_grad():
        for conv in (pair.conv1, pair.conv2):
            nn.init.dirac_(conv.weight)
            conv.bias.zero_()


def grow_network(folder: str | Path, **blocks: int):
    """The network in ``folder`` with more residual pairs, e.g. ``rnet_blocks=4``.

    Keyword arguments are :data:`GROWABLE` fields; each must be at least the parent's count.
    Returns ``(model, info)`` in eval mode, ``info.net`` the grown config; every other weight
    (presence head included: its evidence is unchanged) is the parent's.
    """
    from j4r.model import build_model

    unknown = set(blocks) - set(GROWABLE)
    if unknown:
        raise ValueError(f"cannot grow {sorted(unknown)}; growable: {sorted(GROWABLE)}")
    parent, info = load_checkpoint(folder)
    for field, count in blocks.items():
        if count < getattr(info.net, field):
            raise ValueError(
                f"{field}={count} is fewer than the checkpoint's {getattr(info.net, field)}: "
                "a network can only grow"
            )
    net = dataclasses.replace(info.net, **blocks)
    model = build_model(net).eval()
    missing, unexpected = model.load_state_dict(parent.state_dict(), strict=False)
    new = set()
    for field, module_name in GROWABLE.items():
        body = getattr(model, module_name).body
        for index in range(getattr(info.net, field), len(body)):
            _identity_pair_(body[index])
            new |= {f"{module_name}.body.{index}.{k}" for k in body[index].state_dict()}
    if unexpected or set(missing) != new:
        raise ValueError(f"weights do not fit the grown network: {unexpected or missing}")
    return model, dataclasses.replace(info, net=net)
