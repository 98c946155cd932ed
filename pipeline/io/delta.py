"""Delta Lake tables (delta-rs, the ``deltalake`` package) at a :class:`Location`.

A Delta table is a folder of Parquet data files and a ``_delta_log/`` of numbered JSON commits;
readers (ours, DuckDB, Polars, Spark) take exactly the files the latest commit lists, so data
files written by a writer that died before its commit are never read.

Appends here are *exactly once*: each carries a Delta ``txn`` action (an application id and a
version) in the same commit as its data, and :func:`append_once` first asks the table whether
that id already reached that version. A writer killed after its commit but before it knew,
re-run (or retried after a transient error), therefore never appends twice.

On S3 delta-rs makes a commit with a conditional ``PUT`` (``If-None-Match: *``) of the next
log file, so two writers racing for one version cannot both win: no DynamoDB lock is needed on
stores that honour the header (AWS S3, and moto, which the tests use; see docs/manifests.md).
Credentials come from the standard AWS environment, as for s3fs; the endpoint and region are
taken from the location's s3fs options so that both clients talk to the same store.
"""

from __future__ import annotations

import logging
import os

from pipeline.errors import EndpointUnreachable, StorageError
from pipeline.io.storage import Location, endpoint_of, infrastructure_error

logger = logging.getLogger(__name__)


def table_uri(location: Location, relative: str) -> str:
    """The URI delta-rs opens: a plain path on a local filesystem, ``s3://bucket/key`` else."""
    path = location.path(relative)
    return path if location.protocol == "file" else f"s3://{path.lstrip('/')}"


def delta_storage_options(location: Location) -> dict[str, str]:
    """delta-rs (object_store) options equivalent to the s3fs options of ``location``."""
    if location.protocol == "file":
        return {}
    fs = location.fs
    client_kwargs = getattr(fs, "client_kwargs", None) or {}
    options: dict[str, str] = {}
    endpoint = client_kwargs.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = str(endpoint)
        if str(endpoint).startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    region = (
        client_kwargs.get("region_name")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )
    options["AWS_REGION"] = str(region)
    # Explicit s3fs credentials win over the environment, as they do for s3fs itself.
    for attribute, key in (
        ("key", "AWS_ACCESS_KEY_ID"),
        ("secret", "AWS_SECRET_ACCESS_KEY"),
        ("token", "AWS_SESSION_TOKEN"),
    ):
        value = getattr(fs, attribute, None)
        if value:
            options[key] = str(value)
    # Commits are conditional PUTs (If-None-Match: *), delta-rs's default on S3; say so, so a
    # store that ignores the header is not silently treated as safe by a future default.
    options.setdefault("conditional_put", "etag")
    return options


# delta-rs reports a dead endpoint as a plain error whose text says so (no botocore types).
_UNREACHABLE_TEXT = ("connection refused", "error trying to connect", "dns error", "timed out")


def _storage_error(location: Location, relative: str, action: str, exc: Exception):
    infra = infrastructure_error(exc, location)
    if infra is not None:
        return infra
    if any(text in str(exc).lower() for text in _UNREACHABLE_TEXT):
        return EndpointUnreachable(
            f"cannot reach {endpoint_of(location)} for {location.url(relative)} "
            f"({type(exc).__name__}): check --endpoint-url / AWS_ENDPOINT_URL and the network"
        )
    return StorageError(
        f"{action} the Delta table {location.url(relative)} failed "
        f"({type(exc).__name__}: {str(exc)[:300]})"
    )


def open_table(location: Location, relative: str):
    """The Delta table at ``relative`` (its latest version), or None when there is none yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    uri, options = table_uri(location, relative), delta_storage_options(location)

    def load():
        # Not DeltaTable.is_deltatable: in deltalake 1.6 it keeps the GIL while it waits on
        # S3, which hangs a process that serves S3 itself (the tests' moto server).
        try:
            return DeltaTable(uri, storage_options=options)
        except TableNotFoundError:
            return None

    try:
        return load()  # delta-rs's object store retries by itself
    except Exception as exc:
        raise _storage_error(location, relative, "opening", exc) from exc


def read_table(location: Location, relative: str, schema, filter=None):
    """The table's rows (optionally a pyarrow ``filter`` expression), cast to ``schema``.

    An absent table reads as empty. Columns the table lacks (rows written before they
    existed) read as null.
    """
    import pyarrow as pa

    table = open_table(location, relative)
    if table is None:
        return schema.empty_table()
    try:
        data = table.to_pyarrow_dataset().to_table(filter=filter)
    except Exception as exc:
        raise _storage_error(location, relative, "reading", exc) from exc
    columns = [
        data.column(f.name).cast(f.type)
        if f.name in data.column_names
        else pa.nulls(data.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def transaction_version(location: Location, relative: str, app_id: str) -> int | None:
    """The last version ``app_id`` committed to the table (None: never, or no table)."""
    table = open_table(location, relative)
    return None if table is None else table.transaction_version(app_id)


def append_once(
    location: Location,
    relative: str,
    data,
    *,
    app_id: str,
    version: int,
    metadata: dict[str, str] | None = None,
) -> bool:
    """Append ``data`` (a pyarrow Table or RecordBatchReader) in one Delta commit, unless
    ``app_id`` already committed ``version`` (or later) to the table; True when it appended.

    The check and the ``txn`` action make retries and re-runs idempotent. A ``data`` reader is
    consumed once: retries after a failed attempt need a Table.
    """
    from deltalake import CommitProperties, Transaction, write_deltalake

    uri, options = table_uri(location, relative), delta_storage_options(location)

    def attempt() -> bool:
        done = transaction_version(location, relative, app_id)
        if done is not None and done >= version:
            logger.info("%s: %s version %d was committed before", relative, app_id, version)
            return False
        write_deltalake(
            uri,
            data,
            mode="append",
            # Columns added by a newer schema version (e.g. frames' rain_probability in v4)
            # join a table created before them; older rows read them as null.
            schema_mode="merge",
            storage_options=options,
            commit_properties=CommitProperties(
                app_transactions=[Transaction(app_id=app_id, version=version)],
                custom_metadata=metadata or {},
            ),
        )
        return True

    try:
        return attempt()  # delta-rs's object store retries by itself
    except StorageError:
        raise
    except Exception as exc:
        raise _storage_error(location, relative, "committing to", exc) from exc
