"""``derain train``: presets + YAML + ``--set`` overrides, then the resumable j4r loop; and
``derain average-weights``, a checkpoint between two fine-tunes; ``derain grow-network``, the
same network deeper."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pipeline.cli.exit_codes import EXIT_OK
from pipeline.errors import UsageError, usage_errors


def resolve_configs(args: argparse.Namespace):
    from j4r.config import (
        NetConfig,
        TrainConfig,
        from_dict,
        load_yaml,
        net_config,
        parse_overrides,
        to_dict,
        train_config,
    )

    values = load_yaml(args.config) if args.config else {}
    overrides = parse_overrides(args.overrides)
    net_values = {**values.get("net", {}), **overrides.pop("net", {})}
    train_values = {**values.get("train", {}), **overrides}
    net = from_dict(NetConfig, {**to_dict(net_config(args.preset)), **net_values})
    base = to_dict(train_config(args.preset))
    clip_values = {**base.pop("clip"), **train_values.pop("clip", {})}
    train = from_dict(TrainConfig, {**base, **train_values, "clip": clip_values})
    return net, train


def train_command(args: argparse.Namespace) -> int:
    import torch

    from j4r.checkpoint import CheckpointError
    from j4r.data import ClipSampler
    from j4r.sources import training_sources
    from j4r.train import check_init_from, train
    from pipeline.stage.device import resolve_device

    with usage_errors(ValueError, OSError, CheckpointError):
        net, config = resolve_configs(args)
        if args.init_from:
            check_init_from(args.init_from, net)  # before minutes of loading content
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sampler = ClipSampler(training_sources(), config.clip)
    result = train(
        args.run_dir,
        net=net,
        config=config,
        sampler=sampler,
        device=device,
        version=args.model_version,
        preset=args.preset,
        progress=not args.no_progress,
        init_from=args.init_from,
    )
    print(
        f"derain train: {result.steps} steps in {result.seconds / 60:.1f} min; "
        f"checkpoints {result.final} and {result.stage1}"
    )
    if args.out:
        export_checkpoint(result.final, result.stage1, Path(args.out))
        print(f"derain train: copied the checkpoint to {args.out}")
    return EXIT_OK


def export_checkpoint(final: Path, stage1: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json"):
        shutil.copy2(final / name, destination / name)
        (destination / "stage1").mkdir(exist_ok=True)
        shutil.copy2(stage1 / name, destination / "stage1" / name)


def train_ray_command(args: argparse.Namespace) -> int:
    """``derain train-ray``: the j4r schedule under Ray Train, optionally published."""
    from j4r.config import to_dict
    from pipeline.cli.common import storage_options
    from pipeline.runtime.ray_connect import connect
    from pipeline.runtime.ray_train import RayTrainJob, train_on_ray

    with usage_errors(ValueError, KeyError, TypeError, FileNotFoundError):
        net, train = resolve_configs(args)
        options = storage_options(args)
    connect(args.address, num_cpus=None if args.address else args.workers * args.cpus_per_worker)
    job = RayTrainJob(
        net=to_dict(net),
        train=to_dict(train),
        preset=args.preset,
        version=args.model_version,
        content_url=args.content_url,
        storage_options=options,
        checkpoint_every=args.checkpoint_every,
        threads_per_worker=args.cpus_per_worker,
    )
    result = train_on_ray(
        job,
        storage_path=args.storage_path,
        name=args.name,
        num_workers=args.workers,
        use_gpu=args.gpu,
        max_failures=args.max_failures,
        storage_options=options,
        output_dir=args.out,
    )
    print(
        f"derain train-ray: run {args.name} at step {result.steps} "
        f"(from step {result.metrics.get('start_step', 0)}); checkpoint {result.checkpoint_dir}"
    )
    if result.final and args.publish:
        from pipeline.registry.models import publish_model

        version = publish_model(result.final, args.publish, options, version=args.model_version)
        print(f"  published {version} to {args.publish} (latest)")
    return EXIT_OK


def average_weights_command(args: argparse.Namespace) -> int:
    from j4r.checkpoint import CheckpointError, read_info, save_checkpoint
    from j4r.soup import average_weights, describe

    if args.out.resolve() in (args.first.resolve(), args.second.resolve()):
        raise UsageError("--out must be a new folder, not one of the checkpoints averaged")
    with usage_errors(ValueError, OSError, CheckpointError):
        model, info = average_weights(args.first, args.second, share=args.share)
        record = describe(info, read_info(args.second), args.share)
        version = args.model_version or info.version
        save_checkpoint(model, args.out, name=info.name, version=version, net=info.net,
                        extra={"average_weights": record})  # fmt: skip
    print(
        f"derain average-weights: {1 - args.share:g} x {args.first} + {args.share:g} x "
        f"{args.second} -> {args.out} (no presence head: fit one with `derain fit-presence`)"
    )
    return EXIT_OK


def grow_network_command(args: argparse.Namespace) -> int:
    from j4r.checkpoint import CheckpointError, save_checkpoint
    from j4r.grow import GROWABLE, grow_network

    if args.out.resolve() == args.checkpoint.resolve():
        raise UsageError("--out must be a new folder, not the checkpoint grown")
    blocks = {f: getattr(args, f) for f in GROWABLE if getattr(args, f) is not None}
    if not blocks:
        raise UsageError("say how deep: --rnet-blocks, --cnet-blocks and/or --jrc-blocks")
    with usage_errors(ValueError, OSError, CheckpointError):
        model, info = grow_network(args.checkpoint, **blocks)
        version = args.model_version or info.version
        save_checkpoint(model, args.out, name=info.name, version=version, net=info.net,
                        extra={"grown_from": {**info.identity, **blocks}})  # fmt: skip
    grown = ", ".join(f"{k}={v}" for k, v in blocks.items())
    print(f"derain grow-network: {args.checkpoint} with {grown} -> {args.out} (same outputs; "
          "fine-tune it with `derain train --init-from`)")  # fmt: skip
    return EXIT_OK
