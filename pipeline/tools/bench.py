"""Throughput and memory of the de-rain stage, measured in one run on one machine.

All figures come from one run so their ratios mean something:

* model-only frames/s: RGB frames already in memory on the device, same batch (one clip);
* end-to-end frames/s: the archive job (:func:`pipeline.job.archive.run_archive`: decode, net,
  encode, manifests) on the same frames from a file, sequential runner, in a fresh process;
* GFLOPs per frame (torch's FLOP counter), achieved GFLOP/s, and the machine's ceiling measured
  by a large matmul in the same run;
* peak RSS of that process on a short video and on one 10x longer.

Library of ``derain bench``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.errors import DerainError
from pipeline.io.video import write_frames


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


RESULT_MARK = "DERAIN_BENCH_RESULT "


def run_and_measure(video: str, out: str, checkpoint: str | None, device: str) -> dict:
    """The archive job on one video with the sequential runner in this process: its frames,
    its own timing, and this process's peak RSS. Run by :func:`end_to_end` in a fresh one."""
    import resource

    from pipeline.job.archive import ArchiveJob, run_archive
    from pipeline.registry.checkpoints import read_model_info
    from pipeline.runtime.runners import RunnerSettings, build_runner
    from pipeline.stage.config import StageConfig

    info = read_model_info(checkpoint)
    runner = build_runner(
        StageConfig(checkpoint=checkpoint, device=device), RunnerSettings(kind="sequential")
    )
    try:
        summary = run_archive(
            ArchiveJob(source=video, destination=out, force=True),
            runner,
            model_name=info.name,
            model_version=info.version,
        )
    finally:
        runner.close()
    if summary.failed or not summary.ok:
        raise DerainError(f"the bench video failed: {summary.failures}")
    return {
        "frames": summary.frames,
        "seconds": summary.seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


_CHILD = (
    "import json, sys\n"
    "from pipeline.tools.bench import RESULT_MARK, run_and_measure\n"
    "result = run_and_measure(*sys.argv[1:3], sys.argv[3] or None, sys.argv[4])\n"
    "print(RESULT_MARK + json.dumps(result))\n"
)


def end_to_end(video: Path, out: Path, checkpoint: str | None, device: str) -> dict:
    """:func:`run_and_measure` in a fresh process (so its peak RSS is this video's alone)."""
    command = [sys.executable, "-c", _CHILD, str(video), str(out), checkpoint or "", device]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        raise DerainError(f"bench run failed: {done.stdout[-1000:]} {done.stderr[-2000:]}")
    return json.loads(lines[-1].removeprefix(RESULT_MARK))


def run_bench(
    checkpoint: str | None,
    *,
    device: str = "auto",
    width: int = 320,
    height: int = 240,
    frames: int = 48,
    threads: int = 0,
) -> dict:
    """Every figure of the table, from one run (see the module docstring)."""
    import torch

    from pipeline.registry.checkpoints import load_model
    from pipeline.stage.device import resolve_device

    device = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    model, info = load_model(checkpoint, device=device)
    short = synthetic_frames_thwc_u8(frames, height, width)
    results: dict = {
        "model": f"{info.name} {info.version}",
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "height": height,
        "width": width,
        "frames_short": frames,
        "frames_long": frames * 10,
    }
    results["matmul_ceiling_gflops"] = matmul_ceiling_gflops(device)
    results["gflops_per_frame"] = model_gflops_per_frame(model, height, width, device)
    results["model_only_fps"] = model_only_fps(model, short, device)
    results["achieved_gflops"] = results["gflops_per_frame"] * results["model_only_fps"]
    with tempfile.TemporaryDirectory(prefix="derain-bench-") as tmp:
        tmp_path = Path(tmp)
        short_video, long_video = tmp_path / "short.mp4", tmp_path / "long.mp4"
        write_frames(short_video, short)
        write_frames(long_video, np.concatenate([short] * 10))
        e2e_short = end_to_end(short_video, tmp_path / "o1", checkpoint, device)
        e2e_long = end_to_end(long_video, tmp_path / "o2", checkpoint, device)
    results["end_to_end_fps"] = e2e_long["frames"] / e2e_long["seconds"]
    results["end_to_end_fps_short"] = e2e_short["frames"] / e2e_short["seconds"]
    results["e2e_over_model"] = results["end_to_end_fps"] / results["model_only_fps"]
    results["achieved_over_ceiling"] = results["achieved_gflops"] / results["matmul_ceiling_gflops"]
    results["peak_rss_short_mib"] = e2e_short["peak_rss_mib"]
    results["peak_rss_long_mib"] = e2e_long["peak_rss_mib"]
    results["rss_long_over_short"] = e2e_long["peak_rss_mib"] / e2e_short["peak_rss_mib"]
    return results


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
