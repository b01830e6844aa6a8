"""``featflow backfill --engine spark``: the backfill's kernels inside Apache Spark.

The same rows as :func:`features.backfill.backfill`, row for row, with the same rejects
(reason, detail, record) and duplicates (``tests/features/test_spark_backfill.py``):

1. read the parquet input with each row's number, the arrival order (``_metadata.row_index``;
   with several files, the files in path order, one after the other);
2. validate each task's rows with the file reader's own rules
   (:func:`features.event_files.from_table`, in the executors) and give each row the Kafka
   partition its user lands on (:func:`infra.partitioner.partition_of`);
3. with ``max_delay_ms``, each row's partition clock: the running max event time of the
   accepted rows of its Kafka partition in arrival order. It crosses users, so it is a window
   over the Kafka partition, before the split by user (one task per Kafka partition);
4. repartition by user, sort each partition by arrival and run
   :func:`features.apply.apply_events` over its rows with a fresh
   :class:`~features.state.WindowState` (``mapInArrow``): every feature is per user (the
   clock came with the rows), so the rows equal one state's, as the threaded backfill's do;
5. write the rows (the offline schema: ``kafka_partition`` -1, ``kafka_offset`` the input
   row), and the rejects beside them as JSON lines.

pyspark is imported here only, inside the functions: ``featflow backfill`` without
``--engine spark`` never loads it. Executors import featflow (``pip install featflow[spark]``
on every node); a local master runs them with this interpreter.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import posixpath
import re
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa

from features.apply import Columns, apply_events
from features.event_files import EVENT_COLUMNS, from_table, parquet_records
from features.rows import offline_table
from features.spec import DEFAULT_FEATURES, NO_EXPIRY, Expiry, FeatureSpec
from features.state import WindowState, event_keys
from infra.arrow import from_numpy, to_numpy
from infra.events import EventRules
from infra.partitioner import partition_of

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

ROW, KIND, KPART, CLOCK = "_row", "_kind", "_kpart", "_clock"
REASON, DETAIL, RECORD = "_reason", "_detail", "_record"
ACCEPTED, REFUSED, DUPLICATE = 0, 1, 2  # KIND of a row between the stages

# Rows after validation: accepted ones with their columns, refused ones with their letter.
_CHECKED = pa.schema(
    [
        (ROW, pa.int64()),
        (KIND, pa.int8()),
        ("event_id", pa.string()),
        ("user_id", pa.int64()),
        ("merchant_id", pa.int64()),
        ("amount", pa.float64()),
        ("event_time_ms", pa.int64()),
        (KPART, pa.int32()),
        (REASON, pa.string()),
        (DETAIL, pa.string()),
        (RECORD, pa.string()),
    ]
)
_LETTER = pa.schema([(ROW, pa.int64()), (REASON, pa.string()), (DETAIL, pa.string()),
                     (RECORD, pa.string())])  # fmt: skip
_SPARK_TYPES = {
    pa.string(): "string",
    pa.int8(): "tinyint",
    pa.int32(): "int",
    pa.int64(): "bigint",
    pa.float64(): "double",
    pa.timestamp("us", tz="UTC"): "timestamp",
}


_LOCAL = re.compile(r"local(?:\[(\*|\d+)(?:,\d+)?\])?")  # local, local[4], local[*], local[4,2]


class SparkUnavailable(RuntimeError):
    """pyspark or Java is missing, or Spark did not start: the message says which."""


@dataclass(frozen=True, slots=True)
class SparkOutcome:
    """What a Spark backfill wrote: counts for the command's summary."""

    rows: int
    rejected: dict[str, int]  # refused rows per reason
    duplicates: int
    rejects_path: str | None  # the rejects' folder of JSON lines, where any were refused


def java_binary() -> str | None:
    """The ``java`` Spark will start: ``$JAVA_HOME/bin/java``, else the one on ``PATH``."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "java"), os.X_OK):
        return os.path.join(home, "bin", "java")
    return shutil.which("java")


def session_conf(master: str, conf: Mapping[str, str] | None = None) -> dict[str, str]:
    """The session's settings: featflow's, then ``conf`` over them.

    Any master: no web UI, timestamps in UTC and written as milliseconds (the local engine's
    parquet type), quiet logs. A local master also binds the driver to 127.0.0.1 and keeps
    shuffles small (two partitions per core); a cluster's own defaults are left alone.
    """
    settings = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.log.level": "ERROR",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MILLIS",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "65536",
    }
    local = _LOCAL.fullmatch(master)
    if local:
        cores = local.group(1) or "1"
        n = (os.cpu_count() or 1) if cores == "*" else int(cores)
        settings |= {
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.host": "127.0.0.1",
            "spark.sql.shuffle.partitions": str(max(2, 2 * n)),
        }
    settings |= dict(conf or {})
    return settings


@contextlib.contextmanager
def spark_session(
    master: str = "local[*]", conf: Mapping[str, str] | None = None
) -> Iterator[SparkSession]:
    """A Spark session on ``master`` (``local[*]``, ``spark://...``, ``yarn``, ...), stopped
    on exit unless one was already running in this process (then it is that one).

    Raises :class:`SparkUnavailable` when pyspark or Java is missing or Spark does not start.
    Nothing is downloaded: no packages or jars are asked for.
    """
    if importlib.util.find_spec("pyspark") is None:
        raise SparkUnavailable(
            "--engine spark needs pyspark: pip install 'featflow[spark]' (and Java 17 or 21)"
        )
    from pyspark.sql import SparkSession

    running = SparkSession.getActiveSession()
    if running is not None:
        yield running
        return
    if java_binary() is None:
        raise SparkUnavailable(
            "--engine spark needs Java 17 or 21: none found (set JAVA_HOME or put java on PATH)"
        )
    if master.startswith("local"):  # executors are this interpreter, with featflow in it
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.master(master).appName("featflow-backfill")
    for key, value in session_conf(master, conf).items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # pyspark's JAVA_GATEWAY_EXITED, a refused master, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SparkUnavailable(
            f"Spark did not start on {master} ({first}); check the master, and that Java is "
            f"17 or 21 (found {java_binary()})"
        ) from exc
    try:
        yield spark
    finally:
        spark.stop()


def is_local(path: str) -> bool:
    """Whether ``path`` is on this machine's file system (no scheme, or ``file:``)."""
    scheme = urlsplit(path).scheme
    return scheme in ("", "file") or len(scheme) == 1  # "C:" is a drive, not a scheme


def rejects_path(output: str) -> str:
    """Where the rejects of ``output`` go: its name with ``.rejects.jsonl`` for its suffix,
    as the local engine's ``Path.with_suffix`` (``features.parquet`` ->
    ``features.rejects.jsonl``), on any file system Spark writes to."""
    head, name = posixpath.split(output.rstrip("/"))
    stem = name[: name.rindex(".")] if "." in name.lstrip(".") else name
    return posixpath.join(head, stem + ".rejects.jsonl")


def spark_backfill(
    spark: SparkSession,
    input_path: str,
    output_path: str,
    *,
    lateness_ms: int,
    specs: Sequence[FeatureSpec] = DEFAULT_FEATURES,
    expiry: Expiry = NO_EXPIRY,
    partitions: int = 1,
    rules: EventRules = EventRules(),
    now_ms: int | None = None,
) -> SparkOutcome:
    """Backfill the parquet events at ``input_path`` (a file or a folder of files, any path
    Spark reads) into a parquet folder at ``output_path`` (replaced), rejects beside it.

    The rows equal :func:`features.backfill.backfill`'s (``kafka_offset`` is the input row:
    sort by it for the input order); ``partitions`` is the events topic's partition count,
    for the clocks of ``expiry``. Raises ``ValueError`` when columns are missing.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    source = numbered_source(spark, input_path)
    # three reads of one computation (rows, counts, rejects); on disk, not in memory: reading
    # a partition of the busiest user's rows back into the heap ran a 2 GiB driver out of
    # memory at 10M events
    rows = features_frame(
        source, lateness_ms=lateness_ms, specs=specs, expiry=expiry, partitions=partitions,
        rules=rules, now_ms=now_ms,
    ).persist(StorageLevel.DISK_ONLY)  # fmt: skip
    try:
        names = offline_columns(specs)
        accepted = rows.filter(F.col(KIND) == ACCEPTED).select(*names)
        accepted.write.mode("overwrite").parquet(output_path)
        counts = rows.groupBy(KIND, REASON).count().collect()
        n_rows = sum(c["count"] for c in counts if c[KIND] == ACCEPTED)
        duplicates = sum(c["count"] for c in counts if c[KIND] == DUPLICATE)
        rejected = {c[REASON]: c["count"] for c in counts if c[KIND] == REFUSED}
        where = None
        if rejected:
            where = rejects_path(output_path)
            letters(rows, source).select(
                F.col(ROW).alias("row"),
                F.col(REASON).alias("reason"),
                F.col(DETAIL).alias("detail"),
                F.col(RECORD).alias("record"),
            ).write.mode("overwrite").json(where)
    finally:
        rows.unpersist()
    return SparkOutcome(n_rows, dict(sorted(rejected.items())), duplicates, where)


def numbered_source(spark: SparkSession, input_path: str) -> DataFrame:
    """The input's event columns and ``_row``, each row's number in the input: its row in
    its file, after the rows of the files before it (in path order)."""
    from pyspark.sql import functions as F

    raw = spark.read.parquet(input_path)
    missing = [c for c in EVENT_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"{input_path}: missing columns {missing}")
    frame = raw.select(*EVENT_COLUMNS, "_metadata.row_index", "_metadata.file_path")
    if len(raw.inputFiles()) <= 1:
        return frame.select(*EVENT_COLUMNS, F.col("row_index").alias(ROW))
    sizes = sorted(frame.groupBy("file_path").count().collect(), key=lambda r: r["file_path"])
    starts = np.concatenate([[0], np.cumsum([r["count"] for r in sizes])[:-1]]).tolist()
    offsets = spark.createDataFrame(
        [(r["file_path"], int(s)) for r, s in zip(sizes, starts, strict=True)],
        "file_path string, _start bigint",
    )
    joined = frame.join(F.broadcast(offsets), "file_path")
    return joined.select(*EVENT_COLUMNS, (F.col("_start") + F.col("row_index")).alias(ROW))


def features_frame(
    source: DataFrame,
    *,
    lateness_ms: int,
    specs: Sequence[FeatureSpec],
    expiry: Expiry,
    partitions: int,
    rules: EventRules,
    now_ms: int,
) -> DataFrame:
    """Steps 2-4 of the module docstring: one row per input row, ``_kind`` saying whether it
    is a feature row (the offline columns), a refused row (``_reason``, ``_detail``, and
    ``_record`` where validation refused it) or a duplicate."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    clocked = expiry.max_delay_ms is not None
    check = functools.partial(
        _check, now_ms=now_ms, rules=rules, partitions=partitions if clocked else None
    )
    checked = source.mapInArrow(check, _ddl(_CHECKED))
    if clocked:
        arrival = Window.partitionBy(KPART).orderBy(ROW)
        running = arrival.rowsBetween(Window.unboundedPreceding, Window.currentRow)
        own = F.when(F.col(KIND) == ACCEPTED, F.col("event_time_ms"))
        checked = checked.withColumn(CLOCK, F.max(own).over(running))
    else:
        checked = checked.withColumn(CLOCK, F.lit(None).cast("bigint"))
    apply = functools.partial(_apply, specs=tuple(specs), lateness_ms=lateness_ms,
                              expiry=expiry, clocked=clocked)  # fmt: skip
    by_user = checked.repartition("user_id").sortWithinPartitions(ROW)
    return by_user.mapInArrow(apply, _ddl(_applied_schema(specs)))


def letters(rows: DataFrame, source: DataFrame) -> DataFrame:
    """The refused rows in input order (one partition), each with the record a producer would
    send: validation wrote it; the kernels' refusals (late) take it from the input."""
    from pyspark.sql import functions as F

    refused = rows.filter(F.col(KIND) == REFUSED).select(
        F.col("kafka_offset").alias(ROW), REASON, DETAIL, RECORD
    )
    later = refused.filter(F.col(RECORD).isNull()).drop(RECORD)
    recorded = later.join(source, ROW).mapInArrow(_records, _ddl(_LETTER))
    every = refused.filter(F.col(RECORD).isNotNull()).unionByName(recorded)
    return every.repartition(1).sortWithinPartitions(ROW)


def offline_columns(specs: Sequence[FeatureSpec]) -> list[str]:
    """The feature rows' columns, as :func:`features.rows.offline_table` orders them."""
    return [f.name for f in _offline_schema(tuple(specs))]


# -- executor side: these run in Spark's Python workers, on Arrow batches ------------------


def _check(
    batches: Iterator[pa.RecordBatch], *, now_ms: int, rules: EventRules, partitions: int | None
) -> Iterator[pa.RecordBatch]:
    """Validation (``features.event_files``) of each batch of input rows."""
    for batch in batches:
        table = pa.Table.from_batches([batch])
        numbers = to_numpy(table.column(ROW))
        checked = from_table(table.select(list(EVENT_COLUMNS)), now_ms=now_ms, rules=rules)
        ok = checked.batch
        n = len(ok)
        kpart = (
            from_numpy(partition_of(ok.user_id, partitions).astype(np.int32))
            if partitions is not None
            else pa.nulls(n, pa.int32())
        )
        yield pa.record_batch(
            [
                from_numpy(numbers[ok.offset]),
                pa.array(np.zeros(n, np.int8)),
                ok.arrow_ids().cast(pa.string()),
                from_numpy(ok.user_id),
                from_numpy(ok.merchant_id),
                from_numpy(ok.amount),
                from_numpy(ok.event_time_ms),
                kpart,
                *(pa.nulls(n, pa.string()) for _ in range(3)),
            ],
            schema=_CHECKED,
        )
        if checked.rejected:
            dead = checked.rejected
            yield _sparse(
                _CHECKED,
                len(dead),
                **{
                    ROW: from_numpy(numbers[[d.offset for d in dead]].astype(np.int64)),
                    KIND: pa.array(np.full(len(dead), REFUSED, np.int8)),
                    REASON: pa.array([d.reason.value for d in dead], pa.string()),
                    DETAIL: pa.array([d.detail for d in dead], pa.string()),
                    RECORD: pa.array(
                        [(d.value or b"").decode("utf-8", "replace") for d in dead], pa.string()
                    ),
                },
            )


def _apply(
    batches: Iterator[pa.RecordBatch],
    *,
    specs: tuple[FeatureSpec, ...],
    lateness_ms: int,
    expiry: Expiry,
    clocked: bool,
) -> Iterator[pa.RecordBatch]:
    """One partition's rows, in arrival order, through one fresh window state."""
    state = WindowState(specs, lateness_ms=lateness_ms, expiry=expiry)
    schema = _applied_schema(specs)
    for batch in batches:
        table = pa.Table.from_batches([batch])
        kind = to_numpy(table.column(KIND))
        if (kind != ACCEPTED).any():
            refused = table.take(from_numpy(np.flatnonzero(kind != ACCEPTED).astype(np.int64)))
            yield _sparse(
                schema,
                refused.num_rows,
                kafka_offset=refused.column(ROW).combine_chunks(),
                **{c: refused.column(c).combine_chunks() for c in (KIND, REASON, DETAIL, RECORD)},
            )
            table = table.take(from_numpy(np.flatnonzero(kind == ACCEPTED).astype(np.int64)))
        if not table.num_rows:
            continue
        numbers, users, times, amounts, merchants = (
            _writable(table, c) for c in (ROW, "user_id", "event_time_ms", "amount", "merchant_id")
        )
        clocks = _writable(table, CLOCK) if clocked else None
        ids = table.column("event_id").combine_chunks()
        cols = Columns(users, times, amounts, merchants, event_keys(users, ids), clocks)
        applied = apply_events(state, cols)
        taken = applied.rows
        if len(taken):
            rows = offline_table(
                specs,
                event_id=ids.take(from_numpy(taken)),
                entity_id=users[taken],
                event_time_ms=times[taken],
                features=applied.features,
                partition=np.full(len(taken), -1, np.int32),
                offset=numbers[taken],
            )
            columns = {
                name: rows.column(name).combine_chunks().cast(schema.field(name).type)
                for name in rows.column_names
            }
            columns[KIND] = pa.array(np.zeros(len(taken), np.int8))
            yield _sparse(schema, len(taken), **columns)
        if applied.refused:
            at = np.array([i for i, _, _ in applied.refused], dtype=np.int64)
            yield _sparse(
                schema,
                len(at),
                kafka_offset=from_numpy(numbers[at]),
                **{
                    KIND: pa.array(np.full(len(at), REFUSED, np.int8)),
                    REASON: pa.array([r.value for _, r, _ in applied.refused], pa.string()),
                    DETAIL: pa.array([d for _, _, d in applied.refused], pa.string()),
                },
            )
        if len(applied.duplicates):
            dup = applied.duplicates
            yield _sparse(
                schema,
                len(dup),
                kafka_offset=from_numpy(numbers[dup]),
                **{KIND: pa.array(np.full(len(dup), DUPLICATE, np.int8))},
            )


def _records(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The refused rows' records from their input columns."""
    for batch in batches:
        table = pa.Table.from_batches([batch])
        records = parquet_records(table.select(list(EVENT_COLUMNS)))
        yield pa.record_batch(
            [
                table.column(ROW).combine_chunks(),
                table.column(REASON).combine_chunks(),
                table.column(DETAIL).combine_chunks(),
                pa.array([r.decode("utf-8", "replace") for r in records], pa.string()),
            ],
            schema=_LETTER,
        )


def _writable(table: pa.Table, name: str) -> np.ndarray:
    """A column as a writable numpy copy: Arrow's buffers are read-only, and Numba compiles
    (and caches) a second specialisation of every kernel for read-only arrays (~30 s in each
    Python worker of a fresh install)."""
    return np.array(to_numpy(table.column(name)))


def _sparse(schema: pa.Schema, n: int, **columns: pa.Array) -> pa.RecordBatch:
    """A batch of ``n`` rows of ``schema`` with the given columns, nulls elsewhere."""
    return pa.record_batch(
        [columns.get(f.name, pa.nulls(n, f.type)) for f in schema], schema=schema
    )


@functools.cache
def _offline_schema(specs: Sequence[FeatureSpec]) -> pa.Schema:
    none = np.empty(0, np.int64)
    table = offline_table(specs, event_id=pa.array([], pa.string()), entity_id=none,
                          event_time_ms=none, features=np.empty((0, len(specs))),
                          partition=np.empty(0, np.int32), offset=none)  # fmt: skip
    return table.schema


def _applied_schema(specs: Sequence[FeatureSpec]) -> pa.Schema:
    """The offline columns (timestamps in Spark's microseconds), then the row's kind and
    letter."""
    fields = [
        pa.field(f.name, pa.timestamp("us", tz="UTC") if pa.types.is_timestamp(f.type) else f.type)
        for f in _offline_schema(tuple(specs))
    ]
    return pa.schema([*fields, (KIND, pa.int8()), (REASON, pa.string()), (DETAIL, pa.string()),
                      (RECORD, pa.string())])  # fmt: skip


def _ddl(schema: pa.Schema) -> str:
    """``schema`` as Spark DDL (the types Spark's Arrow conversion maps them to)."""
    return ", ".join(f"`{f.name}` {_SPARK_TYPES[f.type]}" for f in schema)
