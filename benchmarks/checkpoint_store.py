"""Checkpoints at scale: the stall a checkpoint puts in the worker's loop, whole and of
changes, and the stores side by side (files, and a Kafka topic through the embedded broker).

One state holds ``--users`` users with ``--events-per-user`` rows each (a day of events,
uniform users: every user holds its rows; see state_memory). The stall is the copy the
worker makes between fetches (``WindowState.checkpoint``): whole, or of the changes after
``--changed`` more events (5 s of a 4,000 events/s partition by default), ``--repeats``
times each, median and max. The stores: the whole checkpoint saved (chunks and marker
acknowledged, or the file fsynced and renamed), loaded by a new store (as another machine
opens it) and restored into a state.

    python -m benchmarks.checkpoint_store [--users 1000000] [--changed 20000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks._common import fresh_settings, header, servers, table
from features.spec import DAY_MS, DEFAULT_FEATURES, DEFAULT_LATENESS_MS
from features.state import WindowState
from streams.checkpoint import Checkpoint
from streams.checkpoint_stores import open_checkpoints

MIB = 1024**2
START_MS = 1_767_225_600_000


def _state(users: int, per_user: int, seed: int) -> WindowState:
    rng = np.random.default_rng(seed)
    n = users * per_user
    state = WindowState(DEFAULT_FEATURES, lateness_ms=DEFAULT_LATENESS_MS)
    batch = 100_000
    for lo in range(0, n, batch):
        size = min(batch, n - lo)
        user = rng.integers(1, users + 1, size=size, dtype=np.int64)
        t_lo = START_MS + lo * DAY_MS // n
        times = np.sort(rng.integers(t_lo, t_lo + size * DAY_MS // n + 1, size=size))
        amount = np.round(rng.lognormal(3.0, 1.0, size=size), 2)
        state.update(user, times, amount, rng.integers(1, 10_001, size=size, dtype=np.int64))
    return state


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events-per-user", type=int, default=20)
    parser.add_argument("--changed", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    header("checkpoint_store: the stall and the stores", (__doc__ or "").split("\n\n")[1])
    state = _state(args.users, args.events_per_user, seed=0)
    rng = np.random.default_rng(1)
    stalls: dict[str, list[float]] = {"whole": [], "changes": []}
    sizes: dict[str, int] = {}
    t = START_MS + DAY_MS
    for _ in range(args.repeats):
        for kind in ("whole", "changes"):
            users = rng.integers(1, args.users + 1, size=args.changed, dtype=np.int64)
            times = t + np.arange(args.changed, dtype=np.int64)
            t += args.changed
            state.update(users, times, np.ones(args.changed), np.ones(args.changed, np.int64))
            start = time.perf_counter()
            snap = state.checkpoint(changes=kind == "changes")
            stalls[kind].append(time.perf_counter() - start)
            sizes[kind] = len(snap.encode())
    table(
        [[kind, f"{statistics.median(v) * 1000:,.1f}", f"{max(v) * 1000:,.1f}",
          f"{sizes[kind] / MIB:,.1f}"] for kind, v in stalls.items()],
        ["checkpoint", "stall median ms", "stall max ms", "MiB"],
    )  # fmt: skip
    ratio = statistics.median(stalls["whole"]) / statistics.median(stalls["changes"])
    print(f"  after {args.changed:,} events: the stall of changes is {ratio:,.0f} x shorter")
    body = state.snapshot()
    print(f"  state: {state.n_entities:,} users, {state.n_live_rows:,} rows; "
          f"checkpoint {len(body) / MIB:,.1f} MiB "
          f"({len(body) / state.n_entities * 1e6 / MIB:,.0f} MiB per million users)")  # fmt: skip
    rows, out = [], {"stall_whole_s": statistics.median(stalls["whole"]),
                      "stall_changes_s": statistics.median(stalls["changes"])}  # fmt: skip
    with servers("ckpt", redis=False) as srv:
        for kind in ("files", "kafka"):
            settings = fresh_settings(srv, f"ckpt-{kind}", checkpoint_store=kind)
            topic = settings.topics.events
            saves, loads, restores = [], [], []
            for i in range(1 if args.users > 200_000 else args.repeats):
                store = open_checkpoints(settings.stores, settings.kafka, settings.topics)
                start = time.perf_counter()
                store.save(topic, 0, Checkpoint(i, body))
                saves.append(time.perf_counter() - start)
                reader = open_checkpoints(settings.stores, settings.kafka, settings.topics)
                start = time.perf_counter()
                loaded = reader.load(topic, 0)
                loads.append(time.perf_counter() - start)
                assert loaded is not None and loaded.state == body and loaded.offset == i
                start = time.perf_counter()
                WindowState.restore(loaded.state, DEFAULT_FEATURES)
                restores.append(time.perf_counter() - start)
                for s in (store, reader):
                    getattr(s, "close", lambda: None)()
            save, load, restore = (statistics.median(x) for x in (saves, loads, restores))
            mib = len(body) / MIB
            rows.append([kind, f"{save:.2f}", f"{load:.2f}", f"{restore:.2f}",
                         f"{mib / save:,.0f}", f"{mib / load:,.0f}"])  # fmt: skip
            out[f"{kind}_save_s"], out[f"{kind}_load_s"] = save, load
    table(rows, ["store", "save s", "load s", "restore s", "save MiB/s", "load MiB/s"])
    print(f"  kafka / files: save {out['kafka_save_s'] / out['files_save_s']:.1f} x, "
          f"load {out['kafka_load_s'] / out['files_load_s']:.1f} x")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
