"""Two-stage training: single-frame pre-training, then recurrent fine-tuning (paper, Sec. 4).

:func:`train_step` is the unit a Ray Train worker calls; :func:`train` is the resumable loop
behind ``derain train``: it writes ``train_state.pt`` (tensors and plain values only, loaded
with ``weights_only=True``) every ``checkpoint_every_s`` seconds, appends losses to
``train_log.jsonl``, and exports safetensors checkpoints ``stage1/`` and ``final/``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from j4r.arch import J4RNet
from j4r.checkpoint import save_checkpoint
from j4r.config import NetConfig, TrainConfig, to_dict
from j4r.data import Batch, ClipSampler
from j4r.losses import j4r_loss, single_frame_loss
from j4r.model import build_model, parameter_count
from j4r.precision import autocast, resolve_precision

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"


def stage_of(step: int, config: TrainConfig) -> int:
    return 1 if step < config.stage1_steps else 2


def learning_rate(step: int, config: TrainConfig) -> float:
    """Exponential decay from ``lr_start`` to ``lr_end`` within each stage."""
    if step < config.stage1_steps:
        progress = step / max(1, config.stage1_steps - 1)
    else:
        progress = (step - config.stage1_steps) / max(1, config.stage2_steps - 1)
    return config.lr_start * (config.lr_end / config.lr_start) ** min(1.0, progress)


def make_optimizer(model: J4RNet, stage: int, config: TrainConfig) -> torch.optim.Adam:
    """Stage 1 trains the single-frame path; stage 2 all of it, the trunk more slowly (and
    the rain gate and presence head, when there are, each at its own rate: a head added to a
    trained network when fine-tuning has everything to learn). A presence head is best
    fitted on its own afterwards, on a frozen network (:mod:`j4r.presence`)."""
    if stage == 1:
        groups = [
            {"params": [*model.features.parameters(), *model.rnet.parameters()], "lr_scale": 1.0}
        ]
        return torch.optim.Adam(groups, lr=config.lr_start)
    presence = [] if model.presence is None else list(model.presence.parameters())
    trunk = list(model.features.parameters())
    gate = [] if model.gate is None else list(model.gate.parameters())
    seeing = model.rnet.memory_input
    memory_view = [] if seeing is None else list(seeing.parameters())
    coarse = model.rnet.context
    context_view = [] if coarse is None else list(coarse.parameters())
    special = {id(p) for p in trunk + gate + presence + memory_view + context_view}
    rest = [p for p in model.parameters() if id(p) not in special]
    groups = [
        {"params": trunk, "lr_scale": config.trunk_lr_scale},
        {"params": rest, "lr_scale": 1.0},
    ]
    if gate:
        groups.append({"params": gate, "lr_scale": config.gate_lr_scale})
    if memory_view:
        groups.append({"params": memory_view, "lr_scale": config.rnet_memory_lr_scale})
    if context_view:
        groups.append({"params": context_view, "lr_scale": config.rnet_context_lr_scale})
    if presence:
        groups.append({"params": presence, "lr_scale": config.presence_lr_scale})
    return torch.optim.Adam(groups, lr=config.lr_start)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    *,
    step: int,
    config: TrainConfig,
) -> dict[str, float]:
    """One optimisation step on ``batch`` (already on the model's device); returns loss terms.

    ``model`` is a J4RNet, or anything whose ``.module`` has ``single_frame`` (stage 1) and
    that is callable on a clip (stage 2). A plain DDP wrapper is NOT enough: stage 1 would call
    ``model.module.single_frame`` past DDP's forward and its gradients would never be averaged
    (measured: ranks drift apart after one step). :mod:`pipeline.ray_train` wraps the net so
    both stages go through DDP's forward.
    """
    core: J4RNet = getattr(model, "module", model)
    stage = stage_of(step, config)
    lr = learning_rate(step, config)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    device_type = batch.rainy.device.type
    with autocast(device_type, resolve_precision(config.precision, device_type)):
        if stage == 1:
            rainy, clean, streaks = (x[:, 0] for x in (batch.rainy, batch.clean, batch.streaks))
            streak_free, predicted = core.single_frame(rainy)
            terms = single_frame_loss(
                streak_free.float(), predicted.float(), clean=clean, streaks=streaks, config=config
            )
        else:
            out, _ = model(batch.rainy)
            out = type(out)(*(x.float() for x in out))
            terms = j4r_loss(
                out,
                clean=batch.clean,
                streaks=batch.streaks,
                alpha=batch.alpha,
                config=config,
                rainy=batch.rainy,
                gated=core.gate is not None,
                present=core.presence is not None,
            )
    optimizer.zero_grad(set_to_none=True)
    terms.total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return {"lr": lr, "stage": stage, **{k: float(v.detach()) for k, v in terms._asdict().items()}}


def sample_batch(sampler: ClipSampler, step: int, config: TrainConfig, rank: int = 0) -> Batch:
    frames = 1 if stage_of(step, config) == 1 else config.clip.frames
    return sampler.batch(
        seed=config.seed * 1000 + rank, step=step, batch_size=config.batch_size, frames=frames
    )


@dataclass
class TrainResult:
    run_dir: Path
    steps: int  # the step the run reached
    seconds: float
    stage1: Path
    final: Path
    finished: bool  # False when ``stop_after`` paused it: run again to resume


def save_state(run_dir: Path, model: J4RNet, optimizer, step: int, extra: dict[str, Any]) -> None:
    """Write ``run_dir/train_state.pt``; ``extra`` needs ``stage``, ``elapsed_s``, ``config``."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "stage": extra["stage"],
        "torch_rng": torch.get_rng_state(),
        "elapsed_s": extra["elapsed_s"],
        "config_json": json.dumps(extra["config"]),
    }
    tmp = run_dir / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, run_dir / STATE_FILE)


def load_state(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / STATE_FILE
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def resume(
    model: J4RNet,
    state: dict[str, Any] | None,
    *,
    saved_config: dict[str, Any],
    config: TrainConfig,
) -> tuple[int, torch.optim.Adam, float]:
    """Load a saved ``state`` (or none) into ``model``; returns (step, optimizer, elapsed s).

    The optimizer suits the stage of that step and carries its saved moments when the state
    was saved in the same stage. A state of a different network is refused.
    """
    start_step, elapsed = 0, 0.0
    if state is not None:
        previous = json.loads(state["config_json"])
        # Compared as saved: JSON turns tuples (presence_ramp) into lists.
        if previous["net"] != json.loads(json.dumps(saved_config["net"])):
            raise ValueError(
                f"the saved training state is of a different network ({previous['net']}); "
                "start a new run (a new --run-dir or run name)"
            )
        model.load_state_dict(state["model"])
        torch.set_rng_state(state["torch_rng"])
        start_step, elapsed = int(state["step"]), float(state["elapsed_s"])
    optimizer = make_optimizer(model, stage_of(start_step, config), config)
    if state is not None and int(state.get("stage", 0)) == stage_of(start_step, config):
        optimizer.load_state_dict(state["optimizer"])
    return start_step, optimizer, elapsed


# Heads beyond the paper that fine-tuning may add to a checkpoint that lacks them:
# NetConfig field -> the module's state_dict prefix.
ADDABLE_HEADS = {
    "rain_gate": "gate.",
    "rain_presence": "presence.",
    "rnet_memory": "rnet.memory_input.",
    "rnet_context": "rnet.context.",
}
# The presence and veil heads only act on the finished local output, so the network under them
# can be fine-tuned without them and heads fitted for the result afterwards (``derain
# fit-presence``, ``derain fit-veil``).
DROPPABLE_HEADS = {"rain_presence": "presence.", "veil_head": "veil."}
PRESENCE_SETTINGS = ("presence_smoothing", "presence_ramp", "presence_persistence")


def check_init_from(folder: str | Path, net: NetConfig) -> tuple[list[str], list[str]]:
    """The heads ``net`` adds to and drops from the checkpoint in ``folder``; ``ValueError``
    when the two networks differ otherwise (a size, or dropping a gate)."""
    import dataclasses

    from j4r.checkpoint import read_info

    info = read_info(folder)
    added = [f for f in ADDABLE_HEADS if getattr(net, f) and not getattr(info.net, f)]
    dropped = [f for f in DROPPABLE_HEADS if getattr(info.net, f) and not getattr(net, f)]
    settings = {f: getattr(net, f) for f in added + dropped}
    settings["chroma_fill"] = net.chroma_fill  # how the output becomes RGB, not a weight
    if net.rain_presence:  # smoothing and ramp are settings of the head, not weights
        settings.update(presence_smoothing=net.presence_smoothing, presence_ramp=net.presence_ramp)
    if dropped:  # the head stays behind with all its settings
        settings.update({f: getattr(net, f) for f in PRESENCE_SETTINGS})
    if dataclasses.replace(info.net, **settings) != net:
        raise ValueError(
            f"--init-from {folder}: its network {to_dict(info.net)} differs from {to_dict(net)}"
            " (set net.* to match it; only rain_gate, rain_presence, rnet_memory and"
            " rnet_context may be added, and only rain_presence and veil_head dropped)"
        )
    return added, dropped


def initialise_from(model: J4RNet, folder: str | Path, net: NetConfig) -> dict[str, str]:
    """Copy a checkpoint's weights into ``model``; returns its identity.

    The network config must match, except that a checkpoint without a rain gate, a
    presence head, R-Net's view of the memory or its coarse view may start a network with one
    (the new part keeps its fresh initialisation: nearly open, see :class:`j4r.arch.RainGate`
    and :class:`j4r.arch.RainPresence`; zero, see :class:`j4r.arch.RNet`), and that
    a checkpoint's presence head may be left behind (to fine-tune the network and fit a head
    for it afterwards).
    """
    from j4r.checkpoint import load_checkpoint

    added, dropped = check_init_from(folder, net)
    source, info = load_checkpoint(folder)
    left_behind = tuple(DROPPABLE_HEADS[f] for f in dropped)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(left_behind)}
    missing, unexpected = model.load_state_dict(state, strict=not added)
    new_prefixes = tuple(ADDABLE_HEADS[f] for f in added)
    if unexpected or any(not key.startswith(new_prefixes) for key in missing):
        raise ValueError(f"--init-from {folder}: weights do not fit: {missing + unexpected}")
    return info.identity


def export(model: J4RNet, folder: Path, *, net: NetConfig, version: str, record: dict) -> Path:
    return save_checkpoint(
        model,
        folder,
        name=f"j4r-{record.get('preset', 'custom')}",
        version=version,
        net=net,
        extra={"training": record},
    )


def train(
    run_dir: str | Path,
    *,
    net: NetConfig,
    config: TrainConfig,
    sampler: ClipSampler,
    device: str = "cpu",
    version: str = "dev",
    preset: str = "custom",
    progress: bool = True,
    stop_after: int | None = None,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Run (or resume) both stages in ``run_dir``; returns where the checkpoints are.

    ``stop_after`` pauses after that many steps of this call (state saved, resumable).
    ``init_from`` starts from a checkpoint's weights (fine-tuning) instead of a random
    initialisation; its identity is recorded in the training record.
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = build_model(net).to(device)
    saved_config = {"net": to_dict(net), "train": to_dict(config), "preset": preset}
    if init_from is not None:
        saved_config["init_from"] = initialise_from(model, init_from, net)
    state = load_state(run_dir)
    if state is not None:
        logger.info("resuming %s at step %d", run_dir, int(state["step"]))
    start_step, optimizer, elapsed = resume(model, state, saved_config=saved_config, config=config)
    total = config.stage1_steps + config.stage2_steps
    logger.info("J4R-Net %s: %d parameters on %s", preset, parameter_count(model), device)
    record = {"preset": preset, "device": device, "steps": total, **saved_config}
    stage1_dir, final_dir = run_dir / "stage1", run_dir / "final"
    last_save = time.monotonic()
    t0 = time.monotonic() - elapsed
    model.train()
    stop = total if stop_after is None else min(total, start_step + stop_after)
    bar = tqdm(
        range(start_step, stop),
        initial=start_step,
        total=total,
        disable=not progress,
        desc="train",
        unit="step",
    )
    with open(run_dir / LOG_FILE, "a") as log:
        for step in bar:
            if step == config.stage1_steps and step > 0:
                export(
                    model,
                    stage1_dir,
                    net=net,
                    version=version + "-stage1",
                    record={**record, "steps": step, "seconds": time.monotonic() - t0},
                )
                optimizer = make_optimizer(model, 2, config)
            batch = sample_batch(sampler, step, config).to(device)
            terms = train_step(model, optimizer, batch, step=step, config=config)
            if step % config.log_every == 0 or step == total - 1:
                entry = {"step": step, "time_s": round(time.monotonic() - t0, 2), **terms}
                log.write(json.dumps(entry) + "\n")
                log.flush()
                bar.set_postfix(stage=terms["stage"], loss=f"{terms['joint']:.2e}")
            if time.monotonic() - last_save > config.checkpoint_every_s:
                save_state(
                    run_dir,
                    model,
                    optimizer,
                    step + 1,
                    {
                        "elapsed_s": time.monotonic() - t0,
                        "config": saved_config,
                        "stage": terms["stage"],
                    },
                )
                last_save = time.monotonic()
    seconds = time.monotonic() - t0
    if stop < total:
        paused = {"elapsed_s": seconds, "config": saved_config, "stage": stage_of(stop - 1, config)}
        save_state(run_dir, model, optimizer, stop, paused)
        return TrainResult(run_dir, stop, seconds, stage1_dir, final_dir, finished=False)
    if config.stage2_steps == 0 or not stage1_dir.exists():
        export(
            model,
            stage1_dir,
            net=net,
            version=version + "-stage1",
            record={**record, "steps": min(total, config.stage1_steps), "seconds": seconds},
        )
    save_state(
        run_dir, model, optimizer, total, {"elapsed_s": seconds, "config": saved_config, "stage": 2}
    )
    export(model, final_dir, net=net, version=version, record={**record, "seconds": seconds})
    return TrainResult(run_dir, total, seconds, stage1_dir, final_dir, finished=True)
