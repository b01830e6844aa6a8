"""Shared plumbing for the benchmarks: servers, isolated settings, machine facts, printing.

Every benchmark starts its own servers on free 127.0.0.1 ports inside ``with`` blocks, so a
failing run never leaves a broker or Redis behind, and works in a throwaway directory so
nothing lands in the work tree.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import os
import platform
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from featflow.settings import Settings
from features.spec import DEFAULT_FEATURES
from infra.broker import embedded_broker
from infra.redis_server import embedded_redis
from streams.generator import GeneratedEvents, generate_events

# The default features that the other engines (DuckDB, Polars, pandas) compute here, the
# same definitions to 1e-9: comparisons time both sides on these. featflow's quantiles
# (log buckets), this-merchant counts, current values and derived features have no
# counterpart in those scripts yet.
ENGINE_FEATURES = tuple(
    s
    for s in DEFAULT_FEATURES
    if s.agg in ("count", "sum", "mean", "std", "max", "min", "distinct", "since_last", "ewm_mean")
)

ACTIVITIES = ("zipf", "uniform")
ACTIVITY_HELP = (
    "zipf: generate_events as is (the busiest user has ~13%% of all events); uniform: the "
    "same events with user ids redrawn uniformly. It moves the window kernels' cost (scan for "
    "short histories, running state for long ones); quote it with the figures."
)


@dataclass(frozen=True)
class Servers:
    """Where the benchmark's own broker (and Redis, when started) listen."""

    bootstrap: str
    redis_url: str | None
    scratch: Path
    broker_pid: int | None = None  # to watch its CPU beside a worker's (the soak)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory removed afterwards (keeps the repo's .featflow untouched)."""
    with tempfile.TemporaryDirectory(prefix=f"featflow-bench-{prefix}-") as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def servers(prefix: str, *, redis: bool = True) -> Iterator[Servers]:
    """Tansu broker (+ Redis) on free ports; both stopped on exit, also on failure."""
    with scratch_dir(prefix) as scratch, contextlib.ExitStack() as stack:
        broker = stack.enter_context(embedded_broker(log_path=scratch / "tansu.log"))
        redis_url = None
        if redis:
            server = stack.enter_context(embedded_redis(log_path=scratch / "redis.log"))
            redis_url = f"redis://127.0.0.1:{server.port}"
        yield Servers(f"127.0.0.1:{broker.port}", redis_url, scratch, broker.pid)


def log_tail(path: Path, lines: int = 25) -> str:
    """The end of a child's log, for error messages: the scratch dir is gone after the run."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(["--- " + path.name, *text[-lines:]])


def fresh_settings(srv: Servers, name: str, **overrides: object) -> Settings:
    """Settings with their own home, topic and consumer group (as tests/conftest.py does)."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, object] = {
        "home": srv.scratch / f"home-{name}-{tag}",
        "kafka_bootstrap": srv.bootstrap,
        "events_topic": f"bench_{name}_{tag}",
        "consumer_group": f"bench_{name}_{tag}",
    }
    if srv.redis_url:
        values["online_store"] = srv.redis_url
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def make_events(
    n: int,
    *,
    users: int,
    start_ms: int,
    span_ms: float,
    activity: str,
    seed: int,
    zipf: float = 1.1,
) -> GeneratedEvents:
    """``generate_events`` over ``span_ms``; ``activity="uniform"`` redraws the user ids."""
    events = generate_events(
        n, users=users, start_ms=start_ms, mean_gap_ms=span_ms / max(n, 1), seed=seed, zipf=zipf
    )
    if activity == "uniform":
        rng = np.random.default_rng(seed + 1)
        uniform = rng.integers(1, users + 1, size=n, dtype=np.int64)
        events = dataclasses.replace(events, user_id=uniform)
    elif activity != "zipf":
        raise ValueError(f"activity must be one of {ACTIVITIES}, got {activity!r}")
    return events


def zipf_events(n: int, args: argparse.Namespace, *, start_ms: int, span_ms: float,
                seed: int | None = None) -> GeneratedEvents:  # fmt: skip
    """``n`` events of Zipf(``args.zipf``) users, ``args.users_per_event`` users an event,
    over ``span_ms``: the data of the benchmarks that take those two flags."""
    return make_events(
        n,
        users=max(1, int(n * args.users_per_event)),
        start_ms=start_ms,
        span_ms=span_ms,
        activity="zipf",
        seed=args.seed if seed is None else seed,
        zipf=args.zipf,
    )


def warm_up_kernels() -> None:
    """Compile (or load from numba's disk cache) every kernel path before anything is timed
    (``features.warm``; the cache then serves worker subprocesses too)."""
    from features.warm import warm

    warm()


def describe_activity(events: GeneratedEvents, span_ms: float) -> str:
    """Events per user, and the busiest user's share and rate: what drives kernel cost."""
    counts = np.bincount(events.user_id)
    n = len(events)
    top = int(counts.max()) if n else 0
    return (
        f"events per active user: mean {n / max(np.count_nonzero(counts), 1):.1f}, busiest user "
        f"{top:,} ({top / max(n, 1):.1%} of all, {top * 86_400_000 / span_ms:,.0f} per 24 h)"
    )


def machine() -> str:
    """One line naming the machine, so figures in RESULTS.md can be compared honestly."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB RAM, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


SOURCE_DIRS = ("featflow", "features", "streams", "infra")


def code_version() -> str:
    """HEAD, uncommitted source files and a hash of the sources actually measured.

    The tree is edited while benchmarks run, so a figure is only meaningful next to the
    exact code it measured. Git is only read (``--no-optional-locks``: no index refresh).
    """
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for d in SOURCE_DIRS:
        for path in sorted((root / d).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    head, dirty = "unknown", ""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        git = ["git", "--no-optional-locks", "-C", str(root)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            [*git, "status", "--porcelain", "--", *SOURCE_DIRS],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        dirty = ", ".join(line[3:] for line in status if line.strip())
    return (
        f"HEAD {head}"
        + (f" + uncommitted {dirty}" if dirty else "")
        + (f"; sources sha256 {digest.hexdigest()[:12]}")
    )


def header(title: str, method: str) -> None:
    """Benchmark banner: what is measured and how, printed before any figure."""
    print(f"\n=== {title} ===")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"machine: {machine()}")
    print(f"code: {code_version()}")
    for line in method.strip().splitlines():
        print(f"  {line}")


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> None:
    """A plain fixed-width table (also valid inside a Markdown code block)."""
    cells = [[str(c) for c in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for k, row in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdict(name: str, value: float, target: float, *, higher_is_better: bool = True) -> bool:
    """Print and return whether a target is met."""
    met = value >= target if higher_is_better else value <= target
    op = ">=" if higher_is_better else "<="
    print(f"TARGET {name}: {value:.3g} (target {op} {target:g}) -> {'MET' if met else 'NOT MET'}")
    return met
