"""Manifests: what happened to every video and every frame, as Delta Lake tables.

Layout under the manifest root (default ``DST/_manifests``; see docs/manifests.md)::

    videos/    Delta table: one row per video of each committed run
    frames/    Delta table: one row per output frame
    runs/      Delta table: one row per committed run (its counts, model, runner)
    _runs/RUN_ID.json              the run's plan, written first (resuming finds it)
    _pending/run=RUN_ID/TABLE/*.parquet   finished videos' rows, staged until the commit
    _intents/RUN_ID.json           the commit decided: the staged files and the counts

A run's rows reach the tables in one commit per table, each carrying the Delta transaction
``derain-run-RUN_ID``: first ``frames``, then ``videos``, then ``runs``. The intent, written
before the first of them, fixes their content, so a driver killed between two of them is
completed exactly by the next ``derain run`` (:meth:`ManifestStore.recover`), and the
transaction id keeps a replayed commit from appending twice. A run still running or killed
before its intent has rows only under ``_pending/``, which no reader sees.

The version-1 layout (hive-partitioned shards listed by ``_commits/RUN_ID.json``) is copied
into the tables by :meth:`ManifestStore.migrate_v1` (``derain manifest --migrate DST``).
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
from pipeline.io.storage import Location

logger = logging.getLogger(__name__)

# 3: Delta tables (rows as in 2); 2: videos rows record precision and tiles (1 reads them as null)
SCHEMA_VERSION = 4


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
            ("rain_probability", pa.float32()),
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
    rain_probability: list[float] = field(default_factory=list)


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


def runs_schema():
    """One row per committed run: what ``derain manifest`` lists."""
    import pyarrow as pa

    return pa.schema(
        [
            ("schema_version", pa.int16()),
            ("run_id", pa.string()),
            ("committed_at", pa.timestamp("us", tz="UTC")),
            ("source", pa.string()),
            ("destination", pa.string()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("runner", pa.string()),
            ("ok", pa.int64()),
            ("failed", pa.int64()),
            ("partial", pa.int64()),
            ("skipped", pa.int64()),
            ("frames", pa.int64()),
            ("seconds", pa.float64()),
            ("stopped", pa.string()),
        ]
    )


SCHEMAS = {"videos": videos_schema, "frames": frames_schema, "runs": runs_schema}
# A run's commit, table by table: frames before videos (a videos row never points at frames
# that are not there yet), and the runs row last (it marks the run done).
COMMIT_ORDER = ("frames", "videos")
PENDING = "_pending"
INTENTS = "_intents"
V1_COMMITS = "_commits"


def transaction_id(run_id: str) -> str:
    """The Delta transaction id of a run's commits (one per table, version 1)."""
    return f"derain-run-{run_id}"


def _run_row(record: dict[str, Any]) -> dict[str, Any]:
    """The ``runs`` row of a commit record (an intent, or a migrated v1 commit)."""
    committed_at = record.get("committed_at")
    if isinstance(committed_at, str):
        committed_at = datetime.fromisoformat(committed_at)
    row = {name: record.get(name) for name in runs_schema().names}
    row.update(
        schema_version=record.get("schema_version", SCHEMA_VERSION),
        committed_at=committed_at or datetime.now(UTC),
        **{k: record.get(k, 0) for k in ("ok", "failed", "partial", "skipped", "frames")},
        seconds=float(record.get("seconds", 0.0)),
    )
    return row


class ManifestStore:
    """Reads and writes the manifest tables at ``location`` (see the module docstring)."""

    def __init__(self, location: Location):
        self.location = location
        self.fs = location.fs

    # -- staging finished videos -----------------------------------------------------------
    def _write_table(self, table_name: str, run_id: str, shard: str, table) -> str:
        import pyarrow.parquet as pq

        relative = f"{PENDING}/run={run_id}/{table_name}/{shard}-{uuid.uuid4().hex[:8]}.parquet"
        path = self.location.path(relative)
        self.makedirs(posixpath.dirname(path))
        tmp = posixpath.join(posixpath.dirname(path), f".tmp-{uuid.uuid4().hex}")

        def write() -> None:
            if self.location.protocol == "file":
                pq.write_table(table, tmp, filesystem=self.fs)
                self.fs.mv(tmp, path)  # rename: resuming never finds a partial file
            else:
                pq.write_table(table, path, filesystem=self.fs)  # S3 PUT is all-or-nothing

        self._write_once(write, relative)
        return relative

    def makedirs(self, path: str) -> None:
        """Folders exist only on a local filesystem; on object storage s3fs's makedirs would
        create a missing bucket, which derain never does."""
        if self.location.protocol == "file":
            self.fs.makedirs(path, exist_ok=True)

    def _write_once(self, fn, relative: str) -> None:
        """Run one write (botocore retries it, see ``S3_CONFIG_DEFAULTS``); one clear error."""
        try:
            fn()
        except Exception as exc:
            raise StorageError(
                f"writing the manifest file {self.location.url(relative)} failed "
                f"({type(exc).__name__}: {str(exc)[:200]}); the run is not committed: run "
                "again to resume it (finished videos are kept)"
            ) from exc

    def write_videos(self, rows: list[VideoRow], *, shard: str) -> list[str]:
        """Stage several videos rows in one file (e.g. the run's skipped videos)."""
        import pyarrow as pa

        table = pa.Table.from_pylist([asdict(r) for r in rows], schema=videos_schema())
        return [self._write_table("videos", rows[0].run_id, shard, table)]

    def write_video(self, row: VideoRow, frames: FrameRows | None) -> list[str]:
        """Stage one finished video (its videos row, then its frames); returns the files."""
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
        self._write_once(lambda: self.fs.pipe_file(path, payload), relative)

    def begin_run(self, run_id: str, plan: dict[str, Any]) -> None:
        self._put_json(f"_runs/{run_id}.json", {"run_id": run_id, **plan})

    # -- committing ------------------------------------------------------------------------
    def commit_run(self, run_id: str, files: Iterable[str], summary: dict[str, Any]) -> None:
        """Decide the commit (the intent), then apply it: readers see exactly ``files``."""
        record = {
            "run_id": run_id,
            "schema_version": SCHEMA_VERSION,
            "committed_at": datetime.now(UTC).isoformat(),
            "files": sorted(files),
            **summary,
        }
        self._put_json(f"{INTENTS}/{run_id}.json", record)
        self._apply(record)
        self._clean_up(run_id)

    def _apply(self, record: dict[str, Any]) -> None:
        """Append the record's files to ``frames`` and ``videos``, then its ``runs`` row; each
        at most once (Delta transaction ``derain-run-RUN_ID``), so replaying is safe."""
        import pyarrow as pa

        from pipeline.io.delta import append_once

        run_id = record["run_id"]
        app_id, metadata = transaction_id(run_id), {"derain_run_id": run_id}
        for table_name in COMMIT_ORDER:
            files = [f for f in record["files"] if _table_of(f) == table_name]
            if files:
                data = self.read_files(table_name, files)
                append_once(self.location, table_name, data, app_id=app_id, version=1,
                            metadata=metadata)  # fmt: skip
        row = pa.Table.from_pylist([_run_row(record)], schema=runs_schema())
        append_once(self.location, "runs", row, app_id=app_id, version=1, metadata=metadata)
        logger.info("run %s committed to %s", run_id, self.location.url())

    def _clean_up(self, run_id: str) -> None:
        """Drop a committed run's staged files and intent (best effort: they are never read
        again once its ``runs`` row exists)."""
        for relative in (f"{PENDING}/run={run_id}", f"{INTENTS}/{run_id}.json"):
            path = self.location.path(relative)
            try:
                if self.fs.exists(path):
                    self.fs.rm(path, recursive=True)
            except OSError as exc:
                logger.warning("could not remove %s: %s", self.location.url(relative), exc)

    def recover(self) -> list[str]:
        """Complete the commits a killed driver left half-applied; returns their run ids.

        Call with the destination claimed (no other run is committing)."""
        committed = self.committed_run_ids()
        completed = []
        for record in self._read_json_dir(INTENTS):
            run_id = record["run_id"]
            if run_id not in committed:
                logger.warning("completing the interrupted commit of run %s", run_id)
                self._apply(record)
                completed.append(run_id)
            self._clean_up(run_id)
        return completed

    # -- the version-1 layout --------------------------------------------------------------
    def v1_runs_to_migrate(self) -> list[dict[str, Any]]:
        """Commit records of the version-1 layout whose rows are not in the tables yet."""
        committed = self.committed_run_ids()
        return [c for c in self._read_json_dir(V1_COMMITS) if c["run_id"] not in committed]

    def check_layout(self) -> None:
        """Refuse (:class:`~pipeline.errors.UsageError`) to plan on unmigrated v1 manifests:
        the tables would not know the videos those runs did, and all would be redone."""
        pending = self.v1_runs_to_migrate()
        if pending:
            from pipeline.errors import UsageError

            raise UsageError(
                f"{self.location.url()} holds {len(pending)} run(s) in the old (version 1) "
                "manifest layout: run `derain manifest --migrate DST` once, then run again"
            )

    def migrate_v1(self) -> list[str]:
        """Copy every committed v1 run into the tables (one commit per table and run, the
        same transaction ids as a new run's, so an interrupted migration just resumes).

        The v1 shard files and ``_commits/`` are left in place (rollback; delete at will):
        Delta readers never look at files the log does not list. Call with the destination
        claimed. Returns the migrated run ids.
        """
        plans = {r["run_id"]: r for r in self._read_json_dir("_runs")}
        migrated = []
        for record in self.v1_runs_to_migrate():
            plan = plans.get(record["run_id"], {})
            merged = {
                "source": plan.get("source"),
                "destination": plan.get("destination"),
                **record,
                "schema_version": record.get("schema_version", 1),
            }
            self._apply(merged)
            migrated.append(record["run_id"])
        return migrated

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
        """The committed runs (rows of ``runs``), oldest first."""
        rows = self.read("runs").to_pylist()
        return sorted(rows, key=lambda r: (r["committed_at"], r["run_id"]))

    def committed_run_ids(self) -> set[str]:
        return set(self.read("runs").column("run_id").to_pylist())

    def uncommitted_runs(self) -> list[dict[str, Any]]:
        """Plans of runs that have not committed: running, or interrupted (a run that was
        killed while committing is among them until the next run completes its commit)."""
        committed = self.committed_run_ids()
        return [r for r in self._read_json_dir("_runs") if r["run_id"] not in committed]

    def read(self, table_name: str, *, run_id: str | None = None, video_id: str | None = None):
        """Committed rows of ``videos``, ``frames`` or ``runs`` as one pyarrow Table,
        optionally only those of one run (and one video: ids repeat across runs)."""
        import pyarrow.dataset as ds

        from pipeline.io.delta import read_table

        wanted = None
        for name, value in (("run_id", run_id), ("video_id", video_id)):
            if value is not None:
                term = ds.field(name) == value
                wanted = term if wanted is None else wanted & term
        return read_table(self.location, table_name, SCHEMAS[table_name](), filter=wanted)

    def read_files(self, table_name: str, files: Iterable[str]):
        """Rows of staged (or v1) shard files, cast to the current schema."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = SCHEMAS[table_name]()
        tables = [
            pq.read_table(self.location.path(f), filesystem=self.fs, schema=schema)
            for f in files
            if _table_of(f) == table_name
        ]
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def run_files(self, run_id: str) -> list[str]:
        """Files an uncommitted run has staged so far."""
        pattern = self.location.path(f"{PENDING}/run={run_id}/*/*.parquet")
        root = self.location.root.rstrip("/") + "/"
        self.fs.invalidate_cache(self.location.path(PENDING))
        return sorted(p[len(root) :] if p.startswith(root) else p for p in self.fs.glob(pattern))


def _table_of(relative: str) -> str:
    """The table a staged (``_pending/run=R/TABLE/x``) or v1 (``TABLE/date=…``) file is of."""
    parts = relative.split("/")
    return parts[2] if parts[0] == PENDING else parts[0]
