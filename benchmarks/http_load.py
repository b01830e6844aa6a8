"""HTTP load: ``featflow serve`` POST /predict vs Feast's own feature server, open loop.

Why: ``/predict`` (read the user's 11 features + score) should keep p99 <= 5 ms at a steady
request rate, and be no slower than Feast's feature server just *reading* the same row.
How: one embedded Redis holds ``--users`` feature rows and a registered champion
(``benchmarks.predict_latency.populate``). Two servers run as subprocesses on free
127.0.0.1 ports over that same store: ``featflow serve`` (the CLI: uvicorn, one process;
``--no-publish`` unless ``--publish``, which adds an embedded Tansu broker) and
``feast serve`` (gunicorn + one uvicorn worker, access log off, ``--max-requests 0``: its
default recycles the worker every ~1000 requests, which would hand it restarts, not
reads). A separate load-generator process (asyncio + uvloop, raw HTTP/1.1 over a pool of
keep-alive connections) sends requests on a fixed schedule, ``--rate`` per second for
``--warmup`` (discarded) + ``--seconds``, whatever the responses do (open loop), and takes
each latency from the *scheduled* send time to the end of the response, so a stalled
server is charged for the queue it causes (no coordinated omission). featflow gets
``{"user_id": u}``; Feast gets the same users and the same 11 feature refs. The two are
loaded one after the other, never together, alternating for ``--rounds`` rounds.

Caveat: the machine has 2 cores shared by the server under load, Redis and the load
generator (~5% of a core at 500 req/s), so these are not dedicated-server figures.

    python -m benchmarks.http_load [--rate 500] [--seconds 25] [--rounds 2] [--publish]

Overload (featflow alone, ``--only featflow``): at twice the rate above it must answer every
request; past its capacity, with more connections than its in-flight limit (``--pool``),
it must shed the excess with 503 and ``Retry-After`` (counted apart from errors) and keep
the latency of what it answers bounded, instead of queueing without bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from benchmarks._common import header, log_tail, scratch_dir, verdict
from benchmarks.predict_latency import FEATURE_REFS, markdown_table, populate
from featflow.settings import Settings
from features.feast_repo import JOIN_KEY
from infra.broker import embedded_broker
from infra.process import ServerProcess, free_port
from infra.redis_server import embedded_redis

TARGET_P99_MS = 5.0
TARGET_RATIO = 1.0
POOL = 64  # keep-alive connections per load run; more than a stall at 500/s can tie up
REQUEST_TIMEOUT_S = 5.0


# --------------------------------------------------------------------------- load generator
class _Conn:
    """One keep-alive HTTP/1.1 connection; reopened after any error or ``Connection: close``."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(head + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length, chunked, close = 0, False, False
        for line in raw.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            key = key.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif key == b"connection":
                close = b"close" in value.lower()
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(data[:-2])
            payload = b"".join(parts)
        else:
            payload = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _requests(target: str, users: list[int]) -> tuple[bytes, list[bytes], bytes, bytes]:
    """(path, bodies, bytes a good response contains, bytes it must not contain)."""
    if target == "featflow":
        bodies = [b'{"user_id":%d}' % u for u in users]
        return b"/predict", bodies, b'"features_found":true', b"\x00"
    refs = json.dumps(FEATURE_REFS, separators=(",", ":")).encode()
    bodies = [
        b'{"features":%s,"entities":{"%s":[%d]}}' % (refs, JOIN_KEY.encode(), u) for u in users
    ]
    return b"/get-online-features", bodies, b"PRESENT", b"NOT_FOUND"


async def _load(
    port: int, target: str, users: list[int], rate: float, warm: int, pool_size: int = POOL
) -> dict[str, Any]:
    """Send ``len(users)`` requests at ``rate``/s; latencies of those after ``warm``."""
    path, bodies, good, bad = _requests(target, users)
    clock = time.perf_counter  # uvloop's loop.time() only has millisecond resolution
    pool: asyncio.Queue[_Conn] = asyncio.Queue()
    for _ in range(pool_size):
        pool.put_nowait(_Conn(port))
    n = len(users)
    latency = np.full(n, np.nan)  # scheduled send -> response complete, seconds
    service = np.full(n, np.nan)  # request written -> response complete
    lag = np.full(n, np.nan)  # scheduled send -> request written (timer, client, pool wait)
    errors: dict[str, int] = {}
    shed = np.zeros(n, dtype=bool)  # answered 503 with Retry-After: load shed, not an error

    def fail(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def one(i: int, due: float) -> None:
        conn = await pool.get()
        sent = clock()
        lag[i] = sent - due
        head = (
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (path, len(bodies[i]))
        )
        try:
            status, payload = await asyncio.wait_for(
                conn.request(head, bodies[i]), REQUEST_TIMEOUT_S
            )
        except TimeoutError:
            conn.close()
            fail("timeout")
            return
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            conn.close()
            fail(type(exc).__name__)
            return
        finally:
            pool.put_nowait(conn)
        done = clock()
        latency[i] = done - due
        service[i] = done - sent
        if status == 503 and b"overloaded" in payload:
            shed[i] = True
        elif status != 200:
            fail(f"HTTP {status}")
        elif good not in payload or bad in payload:
            fail("wrong body")

    tasks = []
    start = clock() + 0.05
    for i in range(n):
        due = start + i / rate
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    sent_s = clock() - start
    _, pending = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 5)
    for task in pending:
        task.cancel()
        fail("unfinished")
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*pending, return_exceptions=True)
    while not pool.empty():
        pool.get_nowait().close()
    kept = slice(warm, n)
    answered = ~shed[kept]
    return {
        "latency_s": latency[kept][answered].tolist(),
        "shed": int(shed[kept].sum()),
        "service_s": service[kept].tolist(),
        "lag_s": lag[kept].tolist(),
        "errors": errors,
        "achieved_rate": n / sent_s if sent_s > 0 else float("nan"),
    }


def loadgen_main(args: argparse.Namespace) -> int:
    """Child process: run one load and write its raw figures as JSON to ``--out``."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    rng = np.random.default_rng(args.seed)
    warm = int(args.rate * args.warmup)
    n = warm + int(args.rate * args.seconds)
    users = rng.integers(1, args.users + 1, size=n).tolist()
    result = asyncio.run(_load(args.port, args.target, users, args.rate, warm, args.pool))
    Path(args.out).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- orchestration
def _wait_healthy(url: str, proc: ServerProcess, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not healthy after {timeout:.0f} s: {last}")


@contextlib.contextmanager
def _started(proc: ServerProcess, health_url: str) -> Iterator[ServerProcess]:
    """Start, wait for /health, always stop; a failure quotes the server's log."""
    try:
        proc.start(timeout=60.0)
        _wait_healthy(health_url, proc)
    except Exception as exc:
        proc.stop()
        tail = log_tail(proc.log_path) if proc.log_path else ""
        raise RuntimeError(f"{proc.name} failed to start: {exc}\n{tail}") from exc
    try:
        yield proc
    finally:
        proc.stop()


def _run_load(
    args: argparse.Namespace, target: str, port: int, out: Path, seed: int
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.http_load",
        "--loadgen",
        "--target",
        target,
        "--port",
        str(port),
        "--rate",
        str(args.rate),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--users",
        str(args.users),
        "--seed",
        str(seed),
        "--pool",
        str(args.pool),
        "--out",
        str(out),
    ]
    budget = args.warmup + args.seconds + REQUEST_TIMEOUT_S + 30
    subprocess.run(cmd, check=True, timeout=budget)
    return json.loads(out.read_text())


def _stats(latency_s: list[float]) -> dict[str, float]:
    ms = np.asarray(latency_s, dtype=np.float64) * 1000.0
    ms = ms[~np.isnan(ms)]
    if len(ms) == 0:
        return {k: float("nan") for k in ("p50", "p90", "p99", "p999", "max", "mean")}
    return {
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "p999": float(np.percentile(ms, 99.9)),
        "max": float(ms.max()),
        "mean": float(ms.mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=25.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="discarded seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="featflow, Feast alternations")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--publish", action="store_true", help="publish predictions (Tansu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=POOL, help="keep-alive connections")
    parser.add_argument("--only", choices=["featflow"], help="load featflow alone (overload)")
    # internal: the load-generator child
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", choices=["featflow", "feast"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loadgen:
        return loadgen_main(args)

    flags = (
        f"--rate {args.rate:g} --seconds {args.seconds:g} --warmup {args.warmup:g} "
        f"--rounds {args.rounds} --users {args.users}"
        + (" --publish" if args.publish else "")
        + (f" --pool {args.pool}" if args.pool != POOL else "")
        + (f" --only {args.only}" if args.only else "")
    )
    header("HTTP load: featflow /predict vs feast serve", __doc__.split("\n\n")[1] + "\n" + flags)
    bindir = Path(sys.executable).parent
    with scratch_dir("http") as scratch, contextlib.ExitStack() as stack:
        redis = stack.enter_context(embedded_redis(log_path=scratch / "redis.log"))
        values: dict[str, Any] = {
            "home": str(scratch / "home"),
            "online_store": f"redis://127.0.0.1:{redis.port}",
        }
        if args.publish:
            broker = stack.enter_context(embedded_broker(log_path=scratch / "tansu.log"))
            values["kafka_bootstrap"] = f"127.0.0.1:{broker.port}"
        settings = Settings(**values)
        populate(settings, args.users, args.seed)
        if args.publish:
            from infra.topics import ensure_topics

            ensure_topics(settings.kafka, settings.topics)
        config = scratch / "featflow.yaml"
        config.write_text(yaml.safe_dump(values))

        ff_port, feast_port = free_port(), free_port()
        ff_argv = [str(bindir / "featflow"), "--config", str(config), "serve"]
        ff_argv += ["--port", str(ff_port)] + ([] if args.publish else ["--no-publish"])
        feast_argv = [str(bindir / "feast"), "-c", str(settings.stores.feature_repo), "serve"]
        feast_argv += ["-h", "127.0.0.1", "-p", str(feast_port), "--no-access-log"]
        feast_argv += ["--max-requests", "0", "--max-requests-jitter", "0"]
        servers = {
            "featflow": (
                ff_port,
                ServerProcess("featflow serve", ff_argv, ff_port, scratch / "ff.log"),
            ),
            "feast": (
                feast_port,
                ServerProcess("feast serve", feast_argv, feast_port, scratch / "feast.log"),
            ),
        }
        if args.only:
            servers = {args.only: servers[args.only]}
        for _, (port, proc) in servers.items():
            stack.enter_context(_started(proc, f"http://127.0.0.1:{port}/health"))

        runs: list[tuple[str, int, dict[str, Any]]] = []
        for r in range(args.rounds):
            for target, (port, _) in servers.items():
                out = scratch / f"load-{target}-{r}.json"
                result = _run_load(args, target, port, out, seed=args.seed + 10 + r)
                runs.append((target, r + 1, result))
                s = _stats(result["latency_s"])
                print(
                    f"  {target} round {r + 1}: p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms, "
                    f"errors {sum(result['errors'].values())}, shed {result['shed']}",
                    flush=True,
                )
        ff_metrics = httpx.get(f"http://127.0.0.1:{ff_port}/metrics", timeout=5).text

    rows = []
    pooled: dict[str, dict[str, list[float]]] = {}
    for target, rnd, result in runs:
        s = _stats(result["latency_s"])
        lag = _stats(result["lag_s"])
        svc = _stats(result["service_s"])
        errs = sum(result["errors"].values())
        detail = ", ".join(f"{k} {v}" for k, v in sorted(result["errors"].items()))
        rows.append(
            [
                target,
                str(rnd),
                f"{result['achieved_rate']:.0f}",
                s["p50"],
                s["p90"],
                s["p99"],
                s["p999"],
                s["max"],
                svc["p50"],
                svc["p99"],
                lag["p99"],
                f"{errs}" + (f" ({detail})" if detail else ""),
                str(result["shed"]),
            ]
        )
        bucket = pooled.setdefault(target, {"latency_s": [], "service_s": [], "errors": []})
        bucket["latency_s"] += result["latency_s"]
        bucket["service_s"] += result["service_s"]
        bucket["errors"].append(errs)
    for target, bucket in pooled.items():
        s = _stats(bucket["latency_s"])
        rows.append(
            [
                f"**{target}**",
                "all",
                "",
                s["p50"],
                s["p90"],
                s["p99"],
                s["p999"],
                s["max"],
                _stats(bucket["service_s"])["p50"],
                _stats(bucket["service_s"])["p99"],
                "",
                str(sum(bucket["errors"])),
                "",
            ]
        )
    heads = ["server", "round", "req/s sent", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms"]
    heads += [
        "max ms",
        "p50 from write ms",
        "p99 from write ms",
        "client lag p99 ms",
        "errors (incl. warm-up)",
        "shed (503)",
    ]
    ff = _stats(pooled["featflow"]["latency_s"])
    fe = _stats(pooled["feast"]["latency_s"]) if "feast" in pooled else None
    report = [
        f"`python -m benchmarks.http_load {flags}`; featflow "
        + ("publishes predictions to Tansu" if args.publish else "runs with --no-publish"),
        "",
        markdown_table(rows, heads),
        "",
        "Latency columns run from each request's scheduled send time to the end of its "
        "response; 'from write' starts when the request was written instead; 'client lag' is "
        "scheduled -> written (the generator's timer granularity, ~1 ms with uvloop, and its "
        "own CPU stalls).",
    ]
    if fe is not None:
        report += [
            "",
            f"featflow / Feast (pooled): p50 {ff['p50'] / fe['p50']:.2f}, "
            f"p99 {ff['p99'] / fe['p99']:.2f}, max {ff['max'] / fe['max']:.2f}",
        ]
    handler = [ln for ln in ff_metrics.splitlines() if ln.startswith("featflow_predict_latency")]
    count = next((ln for ln in handler if "_count" in ln), None)
    total = next((ln for ln in handler if "_sum" in ln), None)
    if count and total:
        mean_us = float(total.split()[-1]) / max(float(count.split()[-1]), 1) * 1e6
        report.append(f"featflow handler (read + score, its own histogram) mean: {mean_us:.0f} us")
    print("\n".join(report), flush=True)
    verdict(
        "featflow /predict p99 under load (ms)", ff["p99"], TARGET_P99_MS, higher_is_better=False
    )
    if fe is not None:
        verdict(
            "featflow /predict p99 / feast serve p99",
            ff["p99"] / fe["p99"],
            TARGET_RATIO,
            higher_is_better=False,
        )
    errors = sum(sum(b["errors"]) for b in pooled.values())
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
