"""``derain bench``: model-only vs end-to-end throughput, FLOP efficiency and peak memory.

All figures come from one run on one machine so their ratios mean something:

* model-only frames/s: RGB frames already in memory on the device, same batch (one clip);
* end-to-end frames/s: ``derain run`` on the same frames from a file (decode, net, encode,
  manifests), sequential runner, in a fresh process;
* GFLOPs per frame (torch's FLOP counter), achieved GFLOP/s, and the machine's ceiling measured
  by a large matmul in the same run;
* peak RSS of ``derain run`` on a short video and on one 10x longer.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.cli import EXIT_OK
from pipeline.video import write_frames


def synthetic_frames_thwc_u8(frames: int, height: int, width: int) -> np.ndarray:
    """A textured scene panning 1 px per frame with bright streaks (deterministic)."""
    rng = np.random.default_rng(0)
    scene = (rng.random((height, width + frames, 3)) * 0.6 + 0.2).astype(np.float32)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        frame = scene[:, t : t + width].copy()
        frame[:, rng.integers(0, width, width // 20)] += 0.3
        out[t] = (np.clip(frame, 0, 1) * 255).astype(np.uint8)
    return out


def matmul_ceiling_gflops(device: str, size: int = 2048, repeats: int = 5) -> float:
    import torch

    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def model_gflops_per_frame(model, height: int, width: int, device: str) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    luma = torch.rand(1, 1, height, width, device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.step(luma, model.initial_state(luma))
    return counter.get_total_flops() / 1e9


def model_only_fps(model, frames_thwc_u8: np.ndarray, device: str) -> float:
    import torch

    from j4r.model import derain_rgb_step

    rgb = torch.from_numpy(frames_thwc_u8).to(device).permute(0, 3, 1, 2).float() / 255
    memory = None
    derain_rgb_step(model, rgb[:1], None)  # warm-up (allocations, kernels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for t in range(rgb.shape[0]):
        _, _, memory = derain_rgb_step(model, rgb[t : t + 1], memory)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return rgb.shape[0] / (time.perf_counter() - start)


_CHILD = (
    "import resource, sys\n"
    "from pipeline.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "sys.exit(code)\n"
)


def end_to_end(video: Path, out: Path, checkpoint: str | None, device: str) -> dict:
    """``derain run`` in a fresh process: its own timing of the run, and its peak RSS."""
    command = [
        sys.executable,
        "-c",
        _CHILD,
        "run",
        str(video),
        str(out),
        "--runner",
        "sequential",
        "--device",
        device,
        "--no-progress",
        "--force",
    ]
    if checkpoint:
        command += ["--checkpoint", checkpoint]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"derain run failed: {done.stdout[-1000:]} {done.stderr[-2000:]}")
    timing = re.search(r"(\d+) frames in ([\d.]+) s", done.stdout)
    peak = re.search(r"PEAK_RSS_KIB (\d+)", done.stdout)
    if not timing or not peak:
        raise RuntimeError(f"unexpected derain run output: {done.stdout[-1000:]}")
    return {
        "frames": int(timing[1]),
        "seconds": float(timing[2]),
        "peak_rss_mib": int(peak[1]) / 1024,
    }


def bench_command(args: argparse.Namespace) -> int:
    import torch

    from j4r.checkpoint import load_checkpoint

    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    model, info = load_checkpoint(args.checkpoint, device=device)
    short = synthetic_frames_thwc_u8(args.frames, args.height, args.width)
    results: dict = {
        "model": f"{info.name} {info.version}",
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "height": args.height,
        "width": args.width,
        "frames_short": args.frames,
        "frames_long": args.frames * 10,
    }
    results["matmul_ceiling_gflops"] = matmul_ceiling_gflops(device)
    results["gflops_per_frame"] = model_gflops_per_frame(model, args.height, args.width, device)
    results["model_only_fps"] = model_only_fps(model, short, device)
    results["achieved_gflops"] = results["gflops_per_frame"] * results["model_only_fps"]
    with tempfile.TemporaryDirectory(prefix="derain-bench-") as tmp:
        tmp_path = Path(tmp)
        short_video, long_video = tmp_path / "short.mp4", tmp_path / "long.mp4"
        write_frames(short_video, short)
        write_frames(long_video, np.concatenate([short] * 10))
        e2e_short = end_to_end(short_video, tmp_path / "o1", args.checkpoint, device)
        e2e_long = end_to_end(long_video, tmp_path / "o2", args.checkpoint, device)
    results["end_to_end_fps"] = e2e_long["frames"] / e2e_long["seconds"]
    results["end_to_end_fps_short"] = e2e_short["frames"] / e2e_short["seconds"]
    results["e2e_over_model"] = results["end_to_end_fps"] / results["model_only_fps"]
    results["achieved_over_ceiling"] = results["achieved_gflops"] / results["matmul_ceiling_gflops"]
    results["peak_rss_short_mib"] = e2e_short["peak_rss_mib"]
    results["peak_rss_long_mib"] = e2e_long["peak_rss_mib"]
    results["rss_long_over_short"] = e2e_long["peak_rss_mib"] / e2e_short["peak_rss_mib"]
    print(render_table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"derain bench: wrote {args.out}")
    return EXIT_OK


def render_table(r: dict) -> str:
    rows = [
        ("model", r["model"]),
        ("device / torch threads", f"{r['device']} / {r['torch_threads']}"),
        ("frame size", f"{r['width']}x{r['height']}"),
        ("model GFLOPs per frame", f"{r['gflops_per_frame']:.2f}"),
        ("model-only frames/s", f"{r['model_only_fps']:.2f}"),
        ("end-to-end frames/s (long video)", f"{r['end_to_end_fps']:.2f}"),
        ("end-to-end / model-only", f"{r['e2e_over_model']:.2f}"),
        ("achieved GFLOP/s", f"{r['achieved_gflops']:.1f}"),
        ("matmul ceiling GFLOP/s", f"{r['matmul_ceiling_gflops']:.1f}"),
        ("achieved / ceiling", f"{r['achieved_over_ceiling']:.2f}"),
        (f"peak RSS, {r['frames_short']} frames (MiB)", f"{r['peak_rss_short_mib']:.0f}"),
        (f"peak RSS, {r['frames_long']} frames (MiB)", f"{r['peak_rss_long_mib']:.0f}"),
        ("peak RSS long / short", f"{r['rss_long_over_short']:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'measure':<{width}} | value |", f"|{'-' * (width + 2)}|------:|"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    return "\n".join(lines)
