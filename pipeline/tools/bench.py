"""Throughput and memory of the de-rain stage, measured in one run on one machine.

All figures come from one run so their ratios mean something:

* model-only frames/s: RGB frames already in memory on the device, same batch (one clip);
* end-to-end frames/s: the archive job (:func:`pipeline.job.archive.run_archive`: decode, net,
  encode, manifests) on the same frames from a file, sequential runner, in a fresh process;
* GFLOPs per frame (torch's FLOP counter), achieved GFLOP/s, and the machine's ceiling measured
  by a large matmul in the same run;
* peak RSS of that process on a short video and on one 10x longer;
* precision: model-only frames/s in fp32 and in bf16 (bf16 on fewer frames: on CPUs without
  bf16 units it is an order of magnitude slower; with AVX512-BF16 but no AMX, slower too), the
  fp32 and bf16 ceilings of a matmul and of a 3x3 convolution at the model's width, measured
  in the same run, and the share of each the model achieves; the CPU's flags; which
  precision ``auto`` picks here;
* drift: bf16 against fp32 over a long clip at a small size (the recurrent memory is fp32);
* a big frame: peak RSS and frames/s of the archive job on a short 4K video, which runs as
  tiles (default tile budget), in a fresh process.

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


def _rate_gflops(run, flops: float, device: str, min_seconds: float = 0.5) -> float:
    """GFLOP/s of ``run()`` (``flops`` each): one warm-up, then repeats for ``min_seconds``."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    run()
    sync()
    count, start = 0, time.perf_counter()
    while True:
        run()
        count += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return flops * count / elapsed / 1e9


def matmul_ceiling_gflops(
    device: str, size: int = 2048, repeats: int = 5, dtype: str = "fp32"
) -> float:
    """Square matmul rate; bf16 runs on bf16 tensors (what autocast hands the kernel)."""
    import torch

    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=torch_dtype)
    b = torch.randn(size, size, device=device, dtype=torch_dtype)
    return _rate_gflops(lambda: torch.mm(a, b), 2 * size**3, device)


def conv_ceiling_gflops(
    device: str, channels: int, height: int, width: int, dtype: str = "fp32"
) -> float:
    """A 3x3 convolution ``channels`` -> ``channels`` (the model's width), channels_last."""
    import torch
    from torch.nn import functional as F

    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    x = torch.randn(1, channels, height, width, device=device, dtype=torch_dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, channels, 3, 3, device=device, dtype=torch_dtype)
    weight = weight.contiguous(memory_format=torch.channels_last)
    flops = 2 * 9 * channels * channels * height * width
    with torch.inference_mode():
        return _rate_gflops(lambda: F.conv2d(x, weight, padding=1), flops, device)


CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_description() -> dict:
    """The CPU's model name and the flags that decide bf16's speed (from /proc/cpuinfo)."""
    name, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": name, "cpu_flags": [f for f in CPU_FLAGS_OF_INTEREST if f in flags]}


def model_gflops_per_frame(model, height: int, width: int, device: str) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    luma = torch.rand(1, 1, height, width, device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.step(luma, model.initial_state(luma))
    return counter.get_total_flops() / 1e9


def model_only_fps(
    model, frames_thwc_u8: np.ndarray, device: str, precision: str = "fp32"
) -> float:
    import torch

    from j4r.model import derain_rgb_step

    rgb = torch.from_numpy(frames_thwc_u8).to(device).permute(0, 3, 1, 2).float() / 255
    memory = None
    derain_rgb_step(model, rgb[:1], None, precision)  # warm-up (allocations, kernels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for t in range(rgb.shape[0]):
        _, _, memory = derain_rgb_step(model, rgb[t : t + 1], memory, precision)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return rgb.shape[0] / (time.perf_counter() - start)


RESULT_MARK = "DERAIN_BENCH_RESULT "


def precision_drift(model, frames: int, size: int, device: str) -> dict:
    """bf16 against fp32 over a long clip (``frames`` of ``size``² px): PSNR of the outputs
    over the first and the last 10 % of frames, and the largest memory difference at the end.
    A memory that drifted would show a falling PSNR and a growing memory difference."""
    import torch

    from j4r.metrics import psnr
    from j4r.model import derain_rgb_step

    clip = synthetic_frames_thwc_u8(frames, size, size)
    rgb = torch.from_numpy(clip).to(device).permute(0, 3, 1, 2).float() / 255
    mem32 = mem16 = None
    scores = []
    for t in range(frames):
        out32, _, mem32 = derain_rgb_step(model, rgb[t : t + 1], mem32, "fp32")
        out16, _, mem16 = derain_rgb_step(model, rgb[t : t + 1], mem16, "bf16")
        scores.append(min(psnr(out16[0], out32[0]), 99.0))
    tenth = max(1, frames // 10)
    return {
        "drift_frames": frames,
        "drift_size": size,
        "drift_psnr_first_db": float(np.mean(scores[:tenth])),
        "drift_psnr_last_db": float(np.mean(scores[-tenth:])),
        "drift_memory_max_abs": float((mem16 - mem32).abs().max()),
    }


def run_and_measure(
    video: str, out: str, checkpoint: str | None, device: str, precision: str = "auto"
) -> dict:
    """The archive job on one video with the sequential runner in this process: its frames,
    its own timing, and this process's peak RSS. Run by :func:`end_to_end` in a fresh one."""
    import resource

    from pipeline.job.archive import ArchiveJob, run_archive
    from pipeline.registry.checkpoints import read_model_info
    from pipeline.runtime.runners import RunnerSettings, build_runner
    from pipeline.stage.config import StageConfig

    info = read_model_info(checkpoint)
    runner = build_runner(
        StageConfig(checkpoint=checkpoint, device=device, precision=precision),
        RunnerSettings(kind="sequential"),
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
        "precision": runner.stage.precision,
        "tiles": _tiles(runner.stage, video),
    }


def _tiles(stage, video: str) -> int:
    from pipeline.io.video import probe
    from pipeline.stage.tiles import tiles_for

    info = probe(video)
    grid = tiles_for(info.width, info.height, stage.config, stage.channels)
    return len(grid) if grid is not None else 1


_CHILD = (
    "import json, sys\n"
    "from pipeline.tools.bench import RESULT_MARK, run_and_measure\n"
    "result = run_and_measure(*sys.argv[1:3], sys.argv[3] or None, *sys.argv[4:6])\n"
    "print(RESULT_MARK + json.dumps(result))\n"
)


def end_to_end(
    video: Path, out: Path, checkpoint: str | None, device: str, precision: str = "auto"
) -> dict:
    """:func:`run_and_measure` in a fresh process (so its peak RSS is this video's alone)."""
    command = [sys.executable, "-c", _CHILD, str(video), str(out), checkpoint or "", device]
    command.append(precision)
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
    precision: str = "auto",
    bf16_frames: int = 3,
    drift_frames: int = 3000,
    drift_size: int = 16,
    big: tuple[int, int] | None = (3840, 2160),
    big_frames: int = 2,
) -> dict:
    """Every figure of the table, from one run (see the module docstring)."""
    import torch

    from j4r.precision import resolve_precision
    from pipeline.registry.checkpoints import load_model
    from pipeline.stage.device import resolve_device

    device = resolve_device(device)
    device_type = device.split(":")[0]
    if threads:
        torch.set_num_threads(threads)
    model, info = load_model(checkpoint, device=device)
    short = synthetic_frames_thwc_u8(frames, height, width)
    results: dict = {
        "model": f"{info.name} {info.version}",
        "device": device,
        **cpu_description(),
        "torch_threads": torch.get_num_threads(),
        "precision_requested": precision,
        "precision_auto": resolve_precision("auto", device_type),
        "precision": resolve_precision(precision, device_type),
        "height": height,
        "width": width,
        "frames_short": frames,
        "frames_long": frames * 10,
        "bf16_frames": bf16_frames,
    }
    channels = model.channels
    results["model_channels"] = channels
    results["matmul_ceiling_gflops"] = matmul_ceiling_gflops(device)
    # bf16 at smaller sizes: on CPUs without bf16 units it runs at a few GFLOP/s.
    results["matmul_ceiling_bf16_gflops"] = matmul_ceiling_gflops(device, 512, dtype="bf16")
    results["conv_ceiling_gflops"] = conv_ceiling_gflops(device, channels, height, width)
    results["conv_ceiling_bf16_gflops"] = conv_ceiling_gflops(
        device, channels, min(height, 96), min(width, 128), dtype="bf16"
    )
    results["gflops_per_frame"] = model_gflops_per_frame(model, height, width, device)
    results["model_only_fps"] = model_only_fps(model, short, device)
    results["achieved_gflops"] = results["gflops_per_frame"] * results["model_only_fps"]
    model_bf16, _ = load_model(checkpoint, device=device)
    from j4r.model import prepare_for_precision

    prepare_for_precision(model_bf16, "bf16")
    results["model_only_fps_bf16"] = model_only_fps(
        model_bf16, short[: bf16_frames + 1], device, "bf16"
    )
    results["achieved_gflops_bf16"] = results["gflops_per_frame"] * results["model_only_fps_bf16"]
    results["bf16_over_fp32"] = results["model_only_fps_bf16"] / results["model_only_fps"]
    if drift_frames:
        results.update(precision_drift(model_bf16, drift_frames, drift_size, device))
    with tempfile.TemporaryDirectory(prefix="derain-bench-") as tmp:
        tmp_path = Path(tmp)
        short_video, long_video = tmp_path / "short.mp4", tmp_path / "long.mp4"
        write_frames(short_video, short)
        write_frames(long_video, np.concatenate([short] * 10))
        e2e_short = end_to_end(short_video, tmp_path / "o1", checkpoint, device, precision)
        e2e_long = end_to_end(long_video, tmp_path / "o2", checkpoint, device, precision)
        if big is not None:
            big_width, big_height = big
            big_video = tmp_path / "big.mp4"
            write_frames(big_video, synthetic_frames_thwc_u8(big_frames, big_height, big_width))
            e2e_big = end_to_end(big_video, tmp_path / "o3", checkpoint, device, precision)
            results.update(
                big_width=big_width,
                big_height=big_height,
                big_frames=e2e_big["frames"],
                big_tiles=e2e_big["tiles"],
                big_fps=e2e_big["frames"] / e2e_big["seconds"],
                big_peak_rss_mib=e2e_big["peak_rss_mib"],
            )
    results["end_to_end_precision"] = e2e_long["precision"]
    results["end_to_end_fps"] = e2e_long["frames"] / e2e_long["seconds"]
    results["end_to_end_fps_short"] = e2e_short["frames"] / e2e_short["seconds"]
    model_fps = (
        results["model_only_fps_bf16"]
        if e2e_long["precision"] == "bf16"
        else results["model_only_fps"]
    )
    results["e2e_over_model"] = results["end_to_end_fps"] / model_fps
    results["achieved_over_ceiling"] = results["achieved_gflops"] / results["matmul_ceiling_gflops"]
    results["achieved_over_conv_ceiling"] = (
        results["achieved_gflops"] / results["conv_ceiling_gflops"]
    )
    results["achieved_bf16_over_matmul_bf16"] = (
        results["achieved_gflops_bf16"] / results["matmul_ceiling_bf16_gflops"]
    )
    results["achieved_bf16_over_conv_bf16"] = (
        results["achieved_gflops_bf16"] / results["conv_ceiling_bf16_gflops"]
    )
    results["peak_rss_short_mib"] = e2e_short["peak_rss_mib"]
    results["peak_rss_long_mib"] = e2e_long["peak_rss_mib"]
    results["rss_long_over_short"] = e2e_long["peak_rss_mib"] / e2e_short["peak_rss_mib"]
    return results


def render_table(r: dict) -> str:
    size = f"{r['width']}x{r['height']}"
    rows = [
        ("model", r["model"]),
        ("device / torch threads", f"{r['device']} / {r['torch_threads']}"),
        ("CPU flags (bf16 units: amx_bf16; avx512_bf16)", " ".join(r["cpu_flags"]) or "-"),
        ("precision: requested / auto picks here", f"{r['precision_requested']} / "
         f"{r['precision_auto']}"),
        ("frame size", size),
        ("model GFLOPs per frame", f"{r['gflops_per_frame']:.2f}"),
        ("model-only frames/s, fp32", f"{r['model_only_fps']:.2f}"),
        (f"model-only frames/s, bf16 ({r['bf16_frames']} frames)",
         f"{r['model_only_fps_bf16']:.3f}"),
        ("bf16 / fp32 frames/s", f"{r['bf16_over_fp32']:.3f}"),
        (f"end-to-end frames/s (long video, {r['end_to_end_precision']})",
         f"{r['end_to_end_fps']:.2f}"),
        ("end-to-end / model-only (same precision)", f"{r['e2e_over_model']:.2f}"),
        ("matmul ceiling GFLOP/s, fp32 / bf16",
         f"{r['matmul_ceiling_gflops']:.1f} / {r['matmul_ceiling_bf16_gflops']:.2f}"),
        (f"3x3 conv {r['model_channels']}ch ceiling GFLOP/s, fp32 / bf16",
         f"{r['conv_ceiling_gflops']:.1f} / {r['conv_ceiling_bf16_gflops']:.2f}"),
        ("achieved GFLOP/s, fp32 / bf16",
         f"{r['achieved_gflops']:.1f} / {r['achieved_gflops_bf16']:.2f}"),
        ("fp32 achieved / matmul, / conv ceiling",
         f"{r['achieved_over_ceiling']:.2f} / {r['achieved_over_conv_ceiling']:.2f}"),
        ("bf16 achieved / bf16 matmul, / bf16 conv ceiling",
         f"{r['achieved_bf16_over_matmul_bf16']:.2f} / {r['achieved_bf16_over_conv_bf16']:.2f}"),
        (f"peak RSS, {r['frames_short']} frames (MiB)", f"{r['peak_rss_short_mib']:.0f}"),
        (f"peak RSS, {r['frames_long']} frames (MiB)", f"{r['peak_rss_long_mib']:.0f}"),
        ("peak RSS long / short", f"{r['rss_long_over_short']:.2f}"),
    ]  # fmt: skip
    if "drift_frames" in r:
        rows.append(
            (
                f"bf16 vs fp32 PSNR, first / last 10 % of {r['drift_frames']} frames "
                f"({r['drift_size']}²), dB",
                f"{r['drift_psnr_first_db']:.1f} / {r['drift_psnr_last_db']:.1f}",
            )
        )
    if "big_width" in r:
        big = f"{r['big_width']}x{r['big_height']}"
        rows += [
            (f"{big}: tiles per frame / frames/s", f"{r['big_tiles']} / {r['big_fps']:.3f}"),
            (f"{big}: peak RSS, {r['big_frames']} frames (MiB)", f"{r['big_peak_rss_mib']:.0f}"),
        ]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'measure':<{width}} | value |", f"|{'-' * (width + 2)}|------:|"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    return "\n".join(lines)
