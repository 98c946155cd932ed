"""A run's report: the videos table, per-video α over time, before/after thumbnails.

Built from committed manifests only, so it describes exactly what readers see. The same
Markdown goes two ways: a file beside the manifests (``reports/run=RUN/report.md`` with its
PNGs next to it; ``derain report DST``) and a Prefect artifact (images inlined as data URIs).
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.job.manifest import ManifestStore, report_key, thumbnail_key

logger = logging.getLogger(__name__)

PLOT_SIZE = (480, 120)  # width, height in pixels


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def side_by_side_png(
    before_hwc_u8: np.ndarray | None, after_hwc_u8: np.ndarray, *, height: int = 160
) -> bytes:
    """``before | after`` scaled to ``height`` pixels (just ``after`` without a before)."""
    from PIL import Image

    frames = [f for f in (before_hwc_u8, after_hwc_u8) if f is not None]
    scale = height / frames[0].shape[0]
    width = max(1, round(frames[0].shape[1] * scale))
    gap = 4
    canvas = Image.new("RGB", (len(frames) * width + (len(frames) - 1) * gap, height), "white")
    for i, frame in enumerate(frames):
        tile = Image.fromarray(np.ascontiguousarray(frame)).resize((width, height))
        canvas.paste(tile, (i * (width + gap), 0))
    return _png(canvas)


def alpha_plot_png(alpha_mean: list[float], fps: float | None) -> bytes:
    """Mean P(α = 1) per frame against time, as a small line plot."""
    from PIL import Image, ImageDraw

    width, height = PLOT_SIZE
    left, right, top, bottom = 44, 8, 8, 20
    image = Image.new("RGB", PLOT_SIZE, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, width - right, height - bottom], outline=(120, 120, 120))
    values = np.asarray(alpha_mean, dtype=float)
    top_value = max(0.01, float(values.max()) * 1.1) if values.size else 0.01
    seconds = len(values) / fps if fps else float(len(values))
    draw.text((2, top), f"{top_value:.3f}", fill=(0, 0, 0))
    draw.text((2, height - bottom - 10), "0", fill=(0, 0, 0))
    unit = "s" if fps else "frames"
    draw.text((left, height - bottom + 4), f"0 {unit}", fill=(0, 0, 0))
    draw.text((width - right - 90, height - bottom + 4), f"{seconds:.1f} {unit}", fill=(0, 0, 0))
    draw.text((left + 6, top + 2), "mean alpha", fill=(60, 60, 160))
    if values.size:
        span_x = width - right - left
        span_y = height - bottom - top
        xs = left + np.arange(values.size) * span_x / max(1, values.size - 1)
        ys = height - bottom - values / top_value * span_y
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=(30, 90, 200), width=2)
    return _png(image)


@dataclass
class RunReport:
    run_id: str
    commit: dict[str, Any]
    videos: list[dict[str, Any]]  # one row per video: the table artifact
    sections: list[dict[str, Any]] = field(default_factory=list)  # per-video detail
    images: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG


def video_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def rounded(value, digits):
        return None if value is None else round(float(value), digits)

    return [
        {
            "video": r["source_key"],
            "status": r["status"],
            "frames": r["frames"],
            "video fps": rounded(r["fps"], 3),
            "processed frames/s": rounded(r["frames_per_second"], 2),
            "mean alpha": rounded(r["alpha_mean"], 4),
            "error": (f"{r['error_type']}: {r['error_message']}" if r["error_type"] else ""),
        }
        for r in sorted(rows, key=lambda r: (r["status"] != "failed", r["source_key"]))
    ]


def build_report(store: ManifestStore, run_id: str | None = None, *, detail: int = 20) -> RunReport:
    """The report of committed run ``run_id`` (default: the latest); ``detail`` videos in full."""
    commits = store.commits()
    if not commits:
        raise LookupError("no committed runs yet: run `derain run SRC DST` first")
    by_id = {c["run_id"]: c for c in commits}
    if run_id is not None and run_id not in by_id:
        raise LookupError(f"run {run_id} is not committed (committed: {', '.join(by_id)})")
    commit = by_id[run_id] if run_id else commits[-1]
    rows = store.read("videos", run_id=commit["run_id"]).to_pylist()
    report = RunReport(commit["run_id"], commit, video_table(rows))
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["source_key"])
    for row in ok[:detail]:
        report.sections.append(_section(store, report, row))
    return report


def _section(store, report: RunReport, row: dict[str, Any]) -> dict[str, Any]:
    video_id = row["video_id"]
    frames = store.read("frames", run_id=report.run_id, video_id=video_id)
    alpha = frames.sort_by("frame_index").column("alpha_mean").to_pylist()
    plot = f"alpha-{video_id}.png"
    report.images[plot] = alpha_plot_png(alpha, row["fps"])
    section = {"video": row["source_key"], "output": row["output_url"], "plot": plot}
    thumb = store.location.path(thumbnail_key(report.run_id, video_id))
    if store.fs.exists(thumb):
        name = f"thumb-{video_id}.png"
        report.images[name] = store.fs.cat_file(thumb)
        section["thumbnail"] = name
    return section


def _cell(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: RunReport, image_link: Callable[[str], str]) -> str:
    """Markdown for ``report``; ``image_link(name)`` says where each PNG is (a relative name
    beside the report, or the URL of the file written there)."""
    c = report.commit
    lines = [
        f"# derain-archive run {report.run_id}",
        "",
        f"- model: {c.get('model_name')} {c.get('model_version')}; runner: {c.get('runner')}",
        f"- videos: {c.get('ok', 0)} ok, {c.get('failed', 0)} failed, "
        f"{c.get('skipped', 0)} skipped (done by earlier runs)",
        f"- frames: {c.get('frames', 0)} in {c.get('seconds', 0):.1f} s; "
        f"committed {c.get('committed_at')}",
        "",
        "## Videos",
        "",
    ]
    if report.videos:
        header = list(report.videos[0])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_cell(r[h]) for h in header) + " |" for r in report.videos]
    else:
        lines.append("No videos in this run.")
    for s in report.sections:
        lines += ["", f"## {s['video']}", "", f"Output: `{s['output']}`", ""]
        lines.append(f"![mean alpha over time]({image_link(s['plot'])})")
        if "thumbnail" in s:
            lines += ["", f"![before and after]({image_link(s['thumbnail'])})", ""]
            lines.append("Before (left) and after (right), middle frame.")
    return "\n".join(lines) + "\n"


def write_report(store: ManifestStore, report: RunReport) -> str:
    """``reports/run=RUN/report.md`` and its PNGs beside the manifests; returns the .md URL."""
    key = report_key(report.run_id)
    folder = store.location.path(posixpath.dirname(key))
    store.makedirs(folder)  # never a bucket
    for name, png in report.images.items():
        store.fs.pipe_file(posixpath.join(folder, name), png)
    # The Markdown goes last: a reader who finds it finds its images too.
    markdown = render_markdown(report, image_link=lambda name: name)
    store.fs.pipe_file(store.location.path(key), markdown.encode())
    return store.location.url(key)
