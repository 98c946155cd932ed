"""The ``derain`` command: the parser, and one module per sub-command beside this one.

Heavy imports (torch, av, ray) happen inside the sub-commands, which are thin callers of the
library. Exit codes (:mod:`pipeline.cli.exit_codes`): 0 success; 1 some inputs failed (the
others were processed) or the run was stopped; 2 bad usage or a missing input (a
:class:`~pipeline.errors.UsageError`); 3 infrastructure: a storage endpoint, credentials or a
Ray cluster the command needs is missing or unreachable (an
:class:`~pipeline.errors.InfrastructureError`); 130 interrupted. All are caught here, and each
prints one line saying what to do.

Every option has help text, and every ``--help`` shows the defaults. Renamed options keep their
old spelling as a hidden alias that warns (``--threads-per-worker`` is ``--cpus-per-worker``,
``train --export`` is ``--out``, ``train --version`` is ``--model-version``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from pipeline.cli.exit_codes import EXIT_FAILED, EXIT_INFRASTRUCTURE, EXIT_INTERRUPTED, EXIT_USAGE
from pipeline.errors import DerainError, InfrastructureError, UsageError
from pipeline.stage.config import (
    DEFAULT_MEMORY_LIMIT_MB,
    DEFAULT_TILE_OVERLAP,
    DEFAULT_TILE_PIXELS,
)
from pipeline.stage.segments import DEFAULT_SEGMENT_FRAMES, DEFAULT_WARMUP_FRAMES

logger = logging.getLogger("derain")

ADDRESS_HELP = (
    "Ray cluster to join: auto, HOST:PORT (its GCS) or ray://HOST:PORT (Ray Client); "
    "unset: RAY_ADDRESS if set, else a local Ray started for this command"
)
CPUS_HELP = "CPUs each Ray worker reserves, and the torch threads it uses"
DEVICE_HELP = "auto, cpu, cuda or cuda:N (auto: CUDA when available)"
CHECKPOINT_HELP = "checkpoint folder (unset: the shipped model)"
PRESETS = ["tiny", "small", "paper"]
PRESET_HELP = "network and training preset: tiny (tests), small (shipped), paper (the paper's size)"
CONFIG_HELP = "YAML with `net:` and `train:` mappings, applied over the preset"
SET_HELP = "override a setting, e.g. batch_size=8, clip.size=48 or net.channels=32 (repeatable)"


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option's help that has a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "(default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or default == []
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: hidden from --help, stores into the new option's dest,
    and says once on stderr which spelling to use instead."""

    def __init__(self, option_strings, dest, replacement: str, **kwargs):
        self.replacement = replacement
        kwargs.setdefault("default", argparse.SUPPRESS)
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"derain: {option_string} is deprecated, use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _ramp(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LO,HI such as 0.25,0.75, not {text!r}"
        ) from None
    if not 0.0 <= lo < hi <= 1.0:
        raise argparse.ArgumentTypeError(f"need 0 <= LO < HI <= 1, not {text!r}")
    return lo, hi


def _alias(p: argparse.ArgumentParser, old: str, new: str, **kwargs) -> None:
    """``old`` as a hidden, deprecated spelling of the option ``new`` (same dest and type)."""
    dest = new.lstrip("-").replace("-", "_")
    p.add_argument(old, dest=dest, action=DeprecatedAlias, replacement=new, **kwargs)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("derain-archive")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _add_storage_arguments(p: argparse.ArgumentParser) -> None:
    """``--endpoint-url`` and ``--storage-option``, read by ``common.storage_options``."""
    p.add_argument(
        "--endpoint-url",
        help="S3-compatible endpoint (MinIO, Ceph); unset: AWS_ENDPOINT_URL, else AWS S3",
    )
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra fsspec/s3fs option, e.g. anon=true or config_kwargs.retries.max_attempts=8 "
        "(repeatable; credentials: use the AWS chain, never this)",
    )


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="network precision: auto is bf16 on CUDA with bf16 and on CPUs with AMX "
        "(not AVX512-BF16 alone: measured slower), fp32 elsewhere",
    )


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="de-rain a video file or a folder of videos",
        description="De-rain SRC (a video file or a folder searched recursively for .mp4 .mkv "
        ".avi .mov .mpg ...) into the folder DST. Each output keeps its relative path and name "
        "stem, frame count, size and frame rate. Outputs appear only when complete.",
    )
    p.add_argument("src", help="a video file or folder: local path, file:// or s3://bucket/prefix")
    p.add_argument("dst", help="output folder: local path, file:// or s3://bucket/prefix")
    p.add_argument(
        "--lossless", action="store_true", help="write FFV1 in .mkv (default: H.264 .mp4)"
    )
    p.add_argument("--crf", type=int, default=18, help="H.264 quality, lower is better")
    p.add_argument("--checkpoint", type=Path, help=CHECKPOINT_HELP)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--chunk-frames", type=int, default=16, help="frames decoded at a time")
    _add_precision(p)
    p.add_argument(
        "--tile-pixels",
        type=int,
        default=DEFAULT_TILE_PIXELS,
        help="frames with more pixels run as overlapping tiles of at most this many, each with "
        "its own recurrent memory (unset: sized to --memory-limit-mb and the network's width; "
        "shipped model and 4 GiB: 2.2 MPx, so 1920x1080 runs whole; 0: never tile)",
    )
    p.add_argument(
        "--tile-overlap",
        type=int,
        default=DEFAULT_TILE_OVERLAP,
        help="pixels neighbouring tiles share, blended",
    )
    p.add_argument(
        "--memory-limit-mb",
        type=float,
        default=DEFAULT_MEMORY_LIMIT_MB,
        help="memory per worker: a video whose frames would need more even in tiles fails alone "
        "before decoding",
    )
    p.add_argument("--manifest", help="manifest root URL (unset: DST/_manifests)")
    p.add_argument("--force", action="store_true", help="redo videos a manifest marks done")
    p.add_argument(
        "--max-videos", type=int, help="process at most this many videos (unset: all of them)"
    )
    _add_storage_arguments(p)
    p.add_argument(
        "--runner",
        choices=["ray", "sequential"],
        default="ray",
        help="ray (actors on --address, or on a local Ray sized to the machine) or sequential "
        "(in this process)",
    )
    p.add_argument("--address", help=ADDRESS_HELP)
    p.add_argument(
        "--clips-per-worker",
        type=int,
        default=1,
        help="videos each actor de-rains at once, stepped together as one batch (GPU: 4-16)",
    )
    p.add_argument("--workers", type=int, default=1, help="Ray actors (one model each)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help=CPUS_HELP)
    p.add_argument(
        "--segment-frames",
        type=int,
        default=DEFAULT_SEGMENT_FRAMES,
        help="split longer videos into segments of this many frames that run on different "
        "workers and are joined losslessly afterwards (0: never split)",
    )
    p.add_argument(
        "--warmup-frames",
        type=int,
        default=DEFAULT_WARMUP_FRAMES,
        help="frames before each segment run through the net (output discarded) to rebuild its "
        "memory; 32 keeps a seam within 1 grey level of a continuous run (README)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (frames done, on stderr)"
    )
    p.set_defaults(handler=_lazy("pipeline.cli.run:run_command"))


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train J4R-Net on synthetic rain (resumable)",
        description="Two-stage training: stage 1 pre-trains the single-frame path on single "
        "frames, stage 2 fine-tunes the recurrent net on clips (96x96x7 by default: clip.size, "
        "clip.frames). Re-running with the "
        "same --run-dir resumes from its last state. Writes RUN_DIR/stage1 and RUN_DIR/final.",
    )
    p.add_argument("--preset", default="small", choices=PRESETS, help=PRESET_HELP)
    p.add_argument("--run-dir", type=Path, default=Path("runs/train"), help="state, log, outputs")
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto, cpu or cuda; the autocast precision is --set precision=auto|fp32|bf16 "
        "(auto: bf16 on CUDA and on CPUs with AMX, else fp32)",
    )
    p.add_argument(
        "--model-version", default="dev", help="model version recorded in the checkpoint"
    )
    _alias(p, "--version", "--model-version")
    p.add_argument("--out", type=Path, help="also copy the final checkpoint to this folder")
    _alias(p, "--export", "--out", type=Path)
    p.add_argument(
        "--init-from",
        type=Path,
        help="start from this checkpoint's weights (fine-tune; same network size) "
        "instead of a random initialisation",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_lazy("pipeline.cli.train:train_command"))


def _add_clip_overrides(p: argparse.ArgumentParser) -> None:
    """``--set clip.KEY=VALUE``: the synthetic clips of fit-presence and tune-ramp."""
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a clip setting, e.g. clip.clean_fraction=0.5 (repeatable)",
    )  # fmt: skip


def _add_fit_presence(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit-presence",
        help="fit a checkpoint's rain-presence head (frames judged dry are left alone)",
        description="Adds a rain-presence head to CHECKPOINT (or refits its own) and fits it on "
        "a frozen network: runs the network over --clips synthetic training clips (rain-free "
        "and rainy, from the training content only), keeps each frame's head inputs at random "
        "pixels and whether its rain costs more than --threshold-db of PSNR, then fits the "
        "head on them. Prints the scores on held-out clips; writes the checkpoint to --out.",
    )
    p.add_argument("--checkpoint", type=Path, help=CHECKPOINT_HELP)
    p.add_argument("--out", type=Path, required=True, help="folder for the new checkpoint")
    p.add_argument("--clips", type=int, default=2000, help="synthetic clips to collect (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the collected clips")
    _add_clip_overrides(p)
    p.add_argument(
        "--samples", type=Path, action="append", default=[],
        help="also fit on samples saved by an earlier --save-samples (repeatable)",
    )  # fmt: skip
    p.add_argument("--save-samples", type=Path, help="save the collected samples here")
    p.add_argument(
        "--threshold-db", type=float, default=40.0,
        help="a frame whose rain costs more than this PSNR (luma) counts as rainy",
    )  # fmt: skip
    p.add_argument(
        "--smoothing", type=float,
        help="share of the past in the running average of P(rain) over frames, in [0, 1) "
        "(unset: the checkpoint's; 0 for a new head)",
    )  # fmt: skip
    p.add_argument(
        "--ramp", type=_ramp, metavar="LO,HI",
        help="how P(rain) scales a frame's change: none up to LO (the frame is left bit for "
        "bit), all from HI, linear between; 0,1 applies P(rain) itself (unset: the "
        "checkpoint's; 0,1 for a new head)",
    )  # fmt: skip
    p.add_argument(
        "--persistence", action=argparse.BooleanOptionalAction,
        help="the head also sees how much of each pixel's change was there a frame ago (a "
        "structure) and how much is new (rain); changing it fits a new head (unset: the "
        "checkpoint's; off for a new head)",
    )  # fmt: skip
    p.add_argument("--epochs", type=int, default=15, help="passes over the samples")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    p.add_argument(
        "--model-version", default="dev", help="model version recorded in the checkpoint"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_lazy("pipeline.cli.presence:fit_presence_command"))


def _add_fit_veil(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit-veil",
        help="fit a checkpoint's veil head (lifts the haze of a downpour from the whole frame)",
        description="Adds a veil head to CHECKPOINT (or refits its own) and fits it on a frozen "
        "network: runs the network over --clips synthetic training clips (rain-free and rainy, "
        "from the training content only), keeps each frame's head inputs at random pixels and "
        "the moments its loss needs, then fits the head so the final output comes closest to "
        "the clean frame (mean dB over frames: a dry frame weighs as much as a downpour). The "
        "checkpoint needs a rain-presence head. Prints the scores on held-out clips; writes "
        "the checkpoint to --out.",
    )
    p.add_argument("--checkpoint", type=Path, help=CHECKPOINT_HELP)
    p.add_argument("--out", type=Path, required=True, help="folder for the new checkpoint")
    p.add_argument("--clips", type=int, default=2000, help="synthetic clips to collect (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the collected clips")
    _add_clip_overrides(p)
    p.add_argument(
        "--samples", type=Path, action="append", default=[],
        help="also fit on samples saved by an earlier --save-samples (repeatable)",
    )  # fmt: skip
    p.add_argument("--save-samples", type=Path, help="save the collected samples here")
    p.add_argument("--epochs", type=int, default=60, help="passes over the samples")
    p.add_argument(
        "--model-version", default="dev", help="model version recorded in the checkpoint"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_lazy("pipeline.cli.presence:fit_veil_command"))


def _add_tune_ramp(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune-ramp",
        help="choose how sure of rain a frame must be before it is changed (validation clips)",
        description="Runs CHECKPOINT (with a rain-presence head) over --clips synthetic "
        "validation clips (training content and renderer only, never the evaluation sets; "
        "use a seed the head was not fitted on) and scores every candidate ramp from the same "
        "pass: how many dry frames each changes and by how much, and how much rain it "
        "removes. Chooses the ramp that removes the most rain while the dry frames, pooled, "
        "stay at least --min-dry-psnr from the input (none does: the most cautious). Prints "
        "a table; --json writes it; --out writes a "
        "copy of the checkpoint with the chosen ramp (no weight changes).",
    )
    p.add_argument("--checkpoint", type=Path, help=CHECKPOINT_HELP)
    p.add_argument("--clips", type=int, default=600, help="synthetic validation clips")
    p.add_argument("--seed", type=int, default=21, help="seed of the validation clips")
    _add_clip_overrides(p)
    p.add_argument(
        "--ramp", dest="ramps", type=_ramp, action="append", metavar="LO,HI",
        help="a candidate ramp (repeatable; unset: 0.25,0.75 up to 0.95,0.995)",
    )  # fmt: skip
    p.add_argument(
        "--threshold-db", type=float, default=35.0,
        help="a frame whose rain costs more than this PSNR (luma) counts as rainy",
    )  # fmt: skip
    p.add_argument(
        "--min-dry-psnr", type=float, default=40.0,
        help="the bound on harm: PSNR (luma, dB) of the dry frames' output against their "
        "input, pooled",
    )  # fmt: skip
    p.add_argument("--json", type=Path, help="write the table and the choice here")
    p.add_argument("--out", type=Path, help="write the checkpoint with the chosen ramp here")
    p.add_argument(
        "--model-version", help="model version recorded in --out (unset: the checkpoint's)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_lazy("pipeline.cli.presence:tune_ramp_command"))


def _add_average_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "average-weights",
        help="average the weights of two fine-tunes of one network (a model soup)",
        description="Writes a checkpoint whose every weight is (1 - SHARE) x FIRST + SHARE x "
        "SECOND. Both must be fine-tunes of one network (same size, both with or both without "
        "a rain gate). The presence head is left out: it was fitted to one network's features; "
        "fit one for the average with `derain fit-presence`, then `derain tune-ramp`.",
    )
    p.add_argument("first", type=Path, help="checkpoint folder")
    p.add_argument("second", type=Path, help="checkpoint folder")
    p.add_argument("--share", type=float, default=0.5, help="weight of SECOND, in [0, 1]")
    p.add_argument("--out", type=Path, required=True, help="new checkpoint folder")
    p.add_argument("--model-version", help="version recorded in --out (unset: FIRST's)")
    p.set_defaults(handler=_lazy("pipeline.cli.train:average_weights_command"))


def _add_grow_network(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grow-network",
        help="the same network with more residual blocks, computing exactly what it did",
        description="Writes a checkpoint of CHECKPOINT's network with more residual pairs in "
        "R-Net, C-Net and/or JRC-Net. The new pairs start as the identity (both kernels the "
        "identity, zero bias; their inputs are never negative), so the outputs are unchanged "
        "until you fine-tune it (`derain train --init-from OUT --set net.rnet_blocks=...`).",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint folder")
    p.add_argument("--out", type=Path, required=True, help="new checkpoint folder")
    for name, what in (("rnet", "R-Net (removal)"), ("cnet", "C-Net (fill)"),
                       ("jrc", "JRC-Net (join)")):  # fmt: skip
        p.add_argument(f"--{name}-blocks", type=int, dest=f"{name}_blocks",
                       help=f"residual pairs in {what}; unset: as in CHECKPOINT")  # fmt: skip
    p.add_argument("--model-version", help="version recorded in --out (unset: CHECKPOINT's)")
    p.set_defaults(handler=_lazy("pipeline.cli.train:grow_network_command"))


def _add_train_ray(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-ray",
        help="train J4R-Net on a Ray cluster with Ray Train (DDP), checkpoints in storage",
        description="The same two-stage training as `derain train`, as DDP across --workers Ray "
        "Train workers; each worker synthesises its own batches. Checkpoints go to "
        "STORAGE_PATH/NAME; running again with the same name resumes, and a lost worker "
        "restarts from the last checkpoint. Also the entry point of a training Ray Job.",
    )
    p.add_argument("--storage-path", required=True, help="checkpoint root (s3://... or a folder)")
    p.add_argument("--name", required=True, help="run name: same name, same run (resumes)")
    p.add_argument("--preset", default="small", choices=PRESETS, help=PRESET_HELP)
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP
    )
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (DDP ranks)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL)")
    p.add_argument("--cpus-per-worker", type=int, default=1, help=CPUS_HELP)
    _alias(p, "--threads-per-worker", "--cpus-per-worker", type=int)
    p.add_argument("--address", help=ADDRESS_HELP)
    p.add_argument("--content-url", help="clean training photos (unset: the installed ones)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--max-failures", type=int, default=2, help="worker-group restarts allowed")
    p.add_argument(
        "--model-version", default="dev", help="model version recorded in the checkpoint"
    )
    _alias(p, "--version", "--model-version")
    p.add_argument("--out", type=Path, help="also copy the final checkpoint to this folder")
    p.add_argument("--publish", metavar="REGISTRY", help="publish the result there as latest")
    _add_storage_arguments(p)
    p.set_defaults(handler=_lazy("pipeline.cli.train:train_ray_command"))


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="PSNR/SSIM on held-out test sets: own rain, foreign rain, rain-free clips",
        description="Builds deterministic test clips from held-out content (never used in "
        "training) and scores the rainy input, a temporal median, the single-frame model and "
        "J4R-Net. Sets: light/heavy (the project's rain renderer), foreign-light/foreign-heavy "
        "(an evaluation-only renderer in a different style: generalisation), clean (rain-free "
        "provoking clips; output scored against the input: does no harm); faint (the light "
        "set's streaks at half strength, only when named in --sets). Each set reports the "
        "mean, the worst clip and the luma gain over the input; OUT also gets before/after "
        "PNGs (samples/).",
    )
    p.add_argument("--checkpoint", type=Path, help=CHECKPOINT_HELP)
    p.add_argument(
        "--single-checkpoint",
        type=Path,
        help="stage-1 checkpoint (unset: CHECKPOINT/stage1 when present)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/eval"), help="writes eval.json, eval.md, samples/"
    )
    p.add_argument("--frames", type=int, default=24, help="frames per test clip")
    p.add_argument("--crop", type=int, default=192, help="test clip size in pixels (square)")
    p.add_argument(
        "--sets",
        default="light,heavy,foreign-light,foreign-heavy,clean",
        help="comma-separated test sets to score",
    )
    p.add_argument("--no-samples", action="store_true", help="skip the before/after PNGs")
    p.add_argument(
        "--ablations",
        action="store_true",
        help="also score J4R-Net with its presence head off (every frame gets the whole "
        "change), with its gate open (every pixel changed) and R-Net's streak subtraction "
        "alone (O - S, before the joint stage): tells whether a loss comes from the removal "
        "itself, from the joint stage or from where and when it is applied (three more runs "
        "per clip)",
    )
    _add_precision(p)
    p.set_defaults(handler=_lazy("pipeline.cli.eval:eval_command"))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="synthesise a few rainy clips and de-rain them (the quick start)",
        description="Writes OUT/rainy/*.mp4 (synthetic rain over held-out clean footage), runs "
        "the archive job on them (local Ray by default) into OUT/derained/ with manifests, and "
        "prints PSNR before and after. Side-by-side PNGs land in OUT/compare/.",
    )
    p.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="folder for rainy/, derained/, compare/"
    )
    p.add_argument("--checkpoint", type=Path, help=CHECKPOINT_HELP)
    p.add_argument("--frames", type=int, default=16, help="frames per synthetic rainy clip")
    p.add_argument(
        "--runner",
        choices=["ray", "sequential"],
        default="ray",
        help="ray (actors on --address, or on a local Ray sized to the machine) or sequential "
        "(in this process)",
    )
    p.add_argument("--address", help=ADDRESS_HELP)
    p.add_argument("--workers", type=int, default=2, help="Ray actors (one model each)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help=CPUS_HELP)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(handler=_lazy("pipeline.cli.demo:demo_command"))


def _add_manifest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "manifest",
        help="summarise the runs recorded under a destination",
        description="Lists the committed runs in DST/_manifests (or --manifest) with their "
        "counts, and any run that never committed (interrupted: re-running resumes it); "
        "--migrate copies old (version 1) manifests into the Delta tables.",
    )
    p.add_argument("dst", help="the destination given to `derain run`")
    p.add_argument("--manifest", help="manifest root URL (unset: DST/_manifests)")
    _add_storage_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--migrate",
        action="store_true",
        help="copy manifests of the old (version 1, Parquet + _commits/) layout into the "
        "Delta tables, holding DST's claim; safe to repeat",
    )
    p.set_defaults(handler=_lazy("pipeline.cli.manifest:manifest_command"))


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write (and print) the report of a committed run",
        description="Builds the report of the latest committed run (or --run) from the "
        "manifests: a videos table, mean alpha over time per video, before/after thumbnails. "
        "Writes it beside the manifests as reports/run=RUN/report.md with its PNGs.",
    )
    p.add_argument("dst", help="the destination given to `derain run`")
    p.add_argument("--run", help="run id (unset: the latest committed run)")
    p.add_argument("--manifest", help="manifest root URL (unset: DST/_manifests)")
    _add_storage_arguments(p)
    p.add_argument("--detail", type=int, default=20, help="videos shown with plot and thumbnail")
    p.add_argument("--print", action="store_true", help="also print the Markdown")
    p.set_defaults(handler=_lazy("pipeline.cli.manifest:report_command"))


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the model versions published to a registry",
        description="Lists REGISTRY/j4r/VERSION folders (published by the train-j4r flow or "
        "pipeline.registry.models.publish_model) and marks the one REGISTRY/j4r/latest.json "
        "points to.",
    )
    p.add_argument("registry", help="registry root: local path, file:// or s3://bucket/prefix")
    _add_storage_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_lazy("pipeline.cli.models:models_command"))


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="throughput and memory: model-only vs end-to-end, FLOP efficiency, peak RSS",
        description="Prints a table and writes JSON: model-only frames/s in fp32 and bf16 and "
        "end-to-end frames/s on the same frames and device, GFLOPs per frame against fp32 and "
        "bf16 matmul and 3x3-conv ceilings measured in the same run, bf16-vs-fp32 drift over a "
        "long clip, peak RSS for a short and a 10x longer video and for a tiled 4K video.",
    )
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--width", type=int, default=320, help="frame width of the test videos")
    p.add_argument("--height", type=int, default=240, help="frame height of the test videos")
    p.add_argument(
        "--frames",
        type=int,
        default=48,
        help="frames of the short video (past x264's 40-frame lookahead, so both are steady)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    _add_precision(p)
    p.add_argument("--bf16-frames", type=int, default=3, help="frames of the bf16 model-only leg")
    p.add_argument(
        "--drift-frames",
        type=int,
        default=3000,
        help="bf16-vs-fp32 drift check over this many 16x16 frames (0: skip)",
    )
    p.add_argument(
        "--big",
        default="3840x2160",
        help="WIDTHxHEIGHT of the big-frame run (tiles; peak RSS), or none",
    )
    p.add_argument("--big-frames", type=int, default=2, help="frames of the big-frame video")
    p.add_argument(
        "--out", type=Path, default=Path("runs/bench/bench.json"), help="where the JSON goes"
    )
    p.set_defaults(handler=_lazy("pipeline.cli.bench:bench_command"))


def _add_seams(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "seams",
        help="how many warm-up frames make a segment match a continuous run",
        description="Runs held-out rainy footage continuously and as a segment starting at a "
        "seam primed with K warm-up frames, for several K, and prints the difference.",
    )
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--crop", type=int, default=192, help="test clip size in pixels (square)")
    p.add_argument(
        "--out", type=Path, default=Path("runs/seams.json"), help="where the JSON table goes"
    )
    p.set_defaults(handler=_lazy("pipeline.cli.seams:seams_command"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="derain",
        description="Remove rain from videos with J4R-Net (Liu et al., CVPR 2018).",
        epilog="exit codes: 0 all ok; 1 some videos failed (the others were done) or the run "
        "was stopped; 2 bad usage or a missing input; 3 infrastructure: a storage endpoint, "
        "credentials or a Ray cluster is missing or unreachable; 130 interrupted",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    parser.add_argument(
        "--version", action="version", version=f"derain {_package_version()}",
        help="print the version and exit",
    )  # fmt: skip
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_SubParser
    )
    for add in (
        _add_run,
        _add_manifest,
        _add_report,
        _add_models,
        _add_train,
        _add_fit_presence,
        _add_fit_veil,
        _add_tune_ramp,
        _add_average_weights,
        _add_grow_network,
        _add_train_ray,
        _add_eval,
        _add_demo,
        _add_bench,
        _add_seams,
    ):
        add(sub)
    return parser


class _SubParser(argparse.ArgumentParser):
    """Sub-command parsers: the defaults in every --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _lazy(target: str):
    """A handler that imports its module only when the sub-command runs (keeps --help light)."""

    def handler(args: argparse.Namespace) -> int:
        module, function = target.split(":")
        return getattr(importlib.import_module(module), function)(args)

    return handler


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except UsageError as exc:
        print(f"derain {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InfrastructureError as exc:
        print(f"derain {args.command}: {exc}", file=sys.stderr)
        return EXIT_INFRASTRUCTURE
    except DerainError as exc:  # the run itself could not go on; the message says why
        print(f"derain {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        # Storage clients raise their own types (botocore's NoCredentialsError, connection
        # errors) from anywhere: those are one line and exit 3 too, never a traceback.
        from pipeline.io.storage import infrastructure_error

        infra = infrastructure_error(exc)
        if infra is None:
            raise
        print(f"derain {args.command}: {infra}", file=sys.stderr)
        return EXIT_INFRASTRUCTURE


if __name__ == "__main__":
    sys.exit(main())
