"""Parquet manifests: what happened to every video and every frame, committed per run.

Layout under the manifest root (default ``DST/_manifests``), schema version in every row::

    videos/date=YYYY-MM-DD/run=RUN_ID/VIDEO_ID-ATTEMPT.parquet   one row per video
    frames/date=YYYY-MM-DD/run=RUN_ID/VIDEO_ID-ATTEMPT.parquet   one row per output frame
    _runs/RUN_ID.json                                            the run's plan, written first
    _commits/RUN_ID.json                                         written last: the run's files

Shard files are immutable and uniquely named. A run becomes visible to readers only when its
commit record exists, and readers take exactly the files that record lists, so shards of an
interrupted run (or of a retried video) are never read twice. ``pyarrow.dataset``, pandas and
DuckDB can read the listed files, or the whole tree with hive partitioning.
"""

from __future__ import annotations

import json
import logging
import posixpath
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import StorageError
from pipeline.io.storage import Location, retry

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: videos rows record precision and tiles (shards of 1 read as null)


def videos_schema():
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            ("schema_version", pa.int16()),
            ("run_id", pa.string()),
            ("video_id", pa.string()),
            ("source_url", pa.string()),
            ("source_key", pa.string()),
            ("etag", pa.string()),
            ("output_url", pa.string()),
            ("status", pa.string()),
            ("error_type", pa.string()),
            ("error_message", pa.string()),
            ("frames", pa.int64()),
            ("fps", pa.float64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("model_sha256", pa.string()),
            ("device", pa.string()),
            ("precision", pa.string()),
            ("tiles", pa.int32()),
            ("worker", pa.string()),
            ("started_at", ts),
            ("finished_at", ts),
            ("frames_per_second", pa.float64()),
            ("alpha_mean", pa.float64()),
        ]
    )


def frames_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("schema_version", pa.int16()),
            ("run_id", pa.string()),
            ("video_id", pa.string()),
            ("frame_index", pa.int64()),
            ("timestamp_s", pa.float64()),
            ("alpha_mean", pa.float32()),
            ("alpha_frac", pa.float32()),
            ("alpha_p95", pa.float32()),
            ("streak_mean", pa.float32()),
            ("change_mean", pa.float32()),
        ]
    )


@dataclass
class VideoRow:
    run_id: str
    video_id: str
    source_url: str
    source_key: str
    etag: str
    status: str  # ok | failed | skipped
    output_url: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    frames: int = 0
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    model_name: str | None = None
    model_version: str | None = None
    model_sha256: str | None = None
    device: str | None = None
    precision: str | None = None  # resolved on the worker: fp32 or bf16
    tiles: int | None = None  # tiles per frame (1: frames ran whole)
    worker: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    frames_per_second: float | None = None
    alpha_mean: float | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def for_source(
        cls, run_id: str, video_id: str, source: Any, status: str, **fields: Any
    ) -> VideoRow:
        """A row naming ``source`` (anything with ``url``, ``key``, ``etag``) and its video."""
        return cls(
            run_id=run_id,
            video_id=video_id,
            source_url=source.url,
            source_key=source.key,
            etag=source.etag,
            status=status,
            **fields,
        )


@dataclass
class FrameRows:
    """Column lists for one video's frames (cheaper than a dataclass per frame)."""

    frame_index: list[int] = field(default_factory=list)
    timestamp_s: list[float] = field(default_factory=list)
    alpha_mean: list[float] = field(default_factory=list)
    alpha_frac: list[float] = field(default_factory=list)
    alpha_p95: list[float] = field(default_factory=list)
    streak_mean: list[float] = field(default_factory=list)
    change_mean: list[float] = field(default_factory=list)


MANIFEST_FOLDER = "_manifests"


def default_manifest_url(destination: str) -> str:
    """Where a destination's manifests live unless told otherwise: ``DST/_manifests``."""
    return posixpath.join(str(destination).rstrip("/"), MANIFEST_FOLDER)


def new_run_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def thumbnail_key(run_id: str, video_id: str) -> str:
    """A video's before/after PNG, relative to the manifest root."""
    return f"thumbnails/run={run_id}/{video_id}.png"


def report_key(run_id: str) -> str:
    """A run's Markdown report, relative to the manifest root (images beside it)."""
    return f"reports/run={run_id}/report.md"


def run_date(run_id: str) -> str:
    return f"{run_id[0:4]}-{run_id[4:6]}-{run_id[6:8]}"


class ManifestStore:
    """Reads and writes the manifest tree at ``location``."""

    def __init__(self, location: Location):
        self.location = location
        self.fs = location.fs

    # -- writing ---------------------------------------------------------------------------
    def _write_table(self, table_name: str, run_id: str, video_id: str, table) -> str:
        import pyarrow.parquet as pq

        relative = (
            f"{table_name}/date={run_date(run_id)}/run={run_id}/"
            f"{video_id}-{uuid.uuid4().hex[:8]}.parquet"
        )
        path = self.location.path(relative)
        self.makedirs(posixpath.dirname(path))
        tmp = posixpath.join(posixpath.dirname(path), f".tmp-{uuid.uuid4().hex}")

        def write() -> None:
            if self.location.protocol == "file":
                pq.write_table(table, tmp, filesystem=self.fs)
                self.fs.mv(tmp, path)  # rename: no reader ever sees a partial file
            else:
                pq.write_table(table, path, filesystem=self.fs)  # S3 PUT is all-or-nothing

        self._retry(write, relative)
        return relative

    def makedirs(self, path: str) -> None:
        """Folders exist only on a local filesystem; on object storage s3fs's makedirs would
        create a missing bucket, which derain never does."""
        if self.location.protocol == "file":
            self.fs.makedirs(path, exist_ok=True)

    def _retry(self, fn, relative: str) -> None:
        try:
            retry(fn, what=f"write {relative}")
        except Exception as exc:
            raise StorageError(
                f"writing the manifest file {self.location.url(relative)} failed "
                f"({type(exc).__name__}: {str(exc)[:200]}); the run is not committed: run "
                "again to resume it (finished videos are kept)"
            ) from exc

    def write_videos(self, rows: list[VideoRow], *, shard: str) -> list[str]:
        """Several videos rows in one shard file (e.g. the run's skipped videos)."""
        import pyarrow as pa

        table = pa.Table.from_pylist([asdict(r) for r in rows], schema=videos_schema())
        return [self._write_table("videos", rows[0].run_id, shard, table)]

    def write_video(self, row: VideoRow, frames: FrameRows | None) -> list[str]:
        """One video's shard files (its videos row, then its frames); returns their paths."""
        import pyarrow as pa

        files = self.write_videos([row], shard=row.video_id)
        if frames is not None and frames.frame_index:
            n = len(frames.frame_index)
            columns = {
                "schema_version": [SCHEMA_VERSION] * n,
                "run_id": [row.run_id] * n,
                "video_id": [row.video_id] * n,
                **asdict(frames),
            }
            table = pa.Table.from_pydict(columns, schema=frames_schema())
            files.append(self._write_table("frames", row.run_id, row.video_id, table))
        return files

    def _put_json(self, relative: str, data: dict[str, Any]) -> None:
        path = self.location.path(relative)
        self.makedirs(posixpath.dirname(path))
        payload = json.dumps(data, indent=2, sort_keys=True, default=str).encode()
        self._retry(lambda: self.fs.pipe_file(path, payload), relative)

    def begin_run(self, run_id: str, plan: dict[str, Any]) -> None:
        self._put_json(f"_runs/{run_id}.json", {"run_id": run_id, **plan})

    def commit_run(self, run_id: str, files: Iterable[str], summary: dict[str, Any]) -> None:
        """Write the commit record last: from now on readers see exactly ``files``."""
        record = {
            "run_id": run_id,
            "schema_version": SCHEMA_VERSION,
            "committed_at": datetime.now(UTC).isoformat(),
            "files": sorted(files),
            **summary,
        }
        self._put_json(f"_commits/{run_id}.json", record)

    # -- reading ---------------------------------------------------------------------------
    def _read_json_dir(self, folder: str) -> list[dict[str, Any]]:
        path = self.location.path(folder)
        # Other processes (a concurrent run, a test's own client) change these folders: never
        # answer from s3fs's listing cache.
        self.fs.invalidate_cache(path)
        if not self.fs.exists(path):
            return []
        records = []
        for name in sorted(self.fs.ls(path, detail=False)):
            if name.endswith(".json"):
                records.append(json.loads(self.fs.cat_file(name)))
        return records

    def commits(self) -> list[dict[str, Any]]:
        return self._read_json_dir("_commits")

    def uncommitted_runs(self) -> list[dict[str, Any]]:
        committed = {c["run_id"] for c in self.commits()}
        return [r for r in self._read_json_dir("_runs") if r["run_id"] not in committed]

    def read(self, table_name: str, files: Iterable[str] | None = None):
        """The committed rows of ``videos`` or ``frames`` as one pyarrow Table."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if files is None:
            files = [f for c in self.commits() for f in c["files"]]
        wanted = [f for f in files if f.startswith(table_name + "/")]
        schema = videos_schema() if table_name == "videos" else frames_schema()
        if not wanted:
            return schema.empty_table()
        tables = [
            pq.read_table(self.location.path(f), filesystem=self.fs, schema=schema) for f in wanted
        ]
        return pa.concat_tables(tables)

    def run_files(self, run_id: str) -> list[str]:
        """Shard files an (uncommitted) run has written so far."""
        files = []
        for table_name in ("videos", "frames"):
            pattern = self.location.path(f"{table_name}/date=*/run={run_id}/*.parquet")
            root = self.location.root.rstrip("/") + "/"
            files += [p[len(root) :] if p.startswith(root) else p for p in self.fs.glob(pattern)]
        return sorted(files)
