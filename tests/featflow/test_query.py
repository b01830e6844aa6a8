"""`featflow query`: DuckDB over the stores, answers equal to pandas; bad queries exit 2."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from featflow.cli import main
from inference.model_events import ModelEvents
from streams.generator import generate_events


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home with offline rows (a backfill), outcomes and one monitoring snapshot."""
    home = tmp_path / "home"
    monkeypatch.setenv("FEATFLOW_HOME", str(home))
    events = generate_events(600, users=15, start_ms=1_767_225_600_000, mean_gap_ms=30_000, seed=2)
    source = tmp_path / "events.parquet"
    pq.write_table(events.table(), source)
    result = CliRunner().invoke(
        main, ["backfill", "--input", str(source), "--output", str(tmp_path / "f.parquet")]
    )
    assert result.exit_code == 0, result.output
    (home / "outcomes").mkdir(parents=True)
    labels = pd.DataFrame({"event_id": events.event_id[::3], "label": [i % 2 for i in range(200)]})
    labels.to_parquet(home / "outcomes" / "part-0.parquet")
    (home / "monitoring").mkdir()
    snapshot = pa.table(
        {"metric": ["auc", "psi"], "feature": [None, "amount"], "value": [0.71, 0.03]}
    )
    pq.write_table(snapshot, home / "monitoring" / "snapshot-1.parquet")
    log = ModelEvents(home / "models")
    log.append("trained", "v0001", metrics={"auc": 0.7}, time_ms=1)
    log.append("promoted", "v0001", reason="first model", time_ms=2)
    return home


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["query", *args])
    return result.exit_code, result.stdout, result.stderr


def test_answers_equal_pandas(home: Path) -> None:
    users = home / "offline" / "user_txn_features"  # the features view (merchants beside it)
    offline = pd.concat(pd.read_parquet(p) for p in users.glob("*.parquet"))
    code, out, _ = _run(
        "SELECT user_id, count(*) AS n, max(txn_count_24h) AS busiest FROM features "
        "GROUP BY user_id ORDER BY user_id", "--format", "csv",
    )  # fmt: skip
    assert code == 0, out
    got = pd.read_csv(io.StringIO(out)).set_index("user_id")
    want = offline.groupby("user_id").agg(n=("event_id", "size"), busiest=("txn_count_24h", "max"))
    assert len(got) == 15
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_views_join_and_json(home: Path) -> None:
    code, out, _ = _run(
        "SELECT f.event_id, o.label, f.amount_sum_1h FROM features f "
        "JOIN outcomes o USING (event_id) ORDER BY f.event_id", "--format", "json",
    )  # fmt: skip
    assert code == 0, out
    rows = json.loads(out)
    assert len(rows) == 200 and set(rows[0]) == {"event_id", "label", "amount_sum_1h"}
    code, out, _ = _run("SELECT value FROM monitoring WHERE metric = 'auc'")
    assert code == 0 and "0.71" in out
    code, out, _ = _run(
        "SELECT kind, model_version FROM model_events ORDER BY time_ms", "--format", "csv"
    )
    assert code == 0 and out.splitlines() == [
        "kind,model_version",
        "trained,v0001",
        "promoted,v0001",
    ]


def test_the_merchant_views_are_there(home: Path) -> None:
    """The backfill loaded each event's merchant row beside its user row."""
    code, out, _ = _run(
        "SELECT (SELECT count(*) FROM merchant_activity) = (SELECT count(*) FROM features) "
        "AND (SELECT count(DISTINCT merchant_id) FROM merchant_activity) > 1 AS ok",
        "--format", "csv",
    )  # fmt: skip
    assert code == 0 and out.splitlines() == ["ok", "True"], out


def test_a_bad_query_exits_2_with_duckdbs_message(home: Path) -> None:
    code, out, err = _run("SELEC nonsense")
    assert code == 2 and "syntax error" in err.lower() and not out
    code, _, err = _run("SELECT * FROM predictions")  # no such view (nothing stored yet)
    assert code == 2 and "predictions" in err and "does not exist" in err


def test_the_readme_examples_run(home: Path) -> None:
    import shlex

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("<!-- query-examples:begin -->", 1)[1].split("<!-- query-examples:end", 1)[
        0
    ]
    commands = [shlex.split(line)[2:] for line in block.splitlines() if line.startswith("featflow")]
    assert len(commands) == 3
    for args in commands:
        code, out, err = _run(*args)
        assert code == 0 and out.strip(), (args, err)
