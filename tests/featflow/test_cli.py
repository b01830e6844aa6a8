"""The CLI as a user runs it: --help everywhere, backfill from each file format."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from featflow.cli import main
from featflow.settings import Settings
from features.feast_repo import FEATURE_VIEW, open_store
from features.scoring_row import SCORING_FEATURES
from features.spec import DEFAULT_FEATURES, FEATURE_NAMES
from streams.generator import generate_events
from testing.oracle import Stream, pandas_oracle

NAMES = list(FEATURE_NAMES)


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["broker"],
        ["init"],
        ["worker"],
        ["produce"],
        ["backfill"],
        ["features"],
        ["demo"],
        ["train"],
        ["models"],
        ["models", "rollback"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_backfill_cli(fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATFLOW_HOME", str(tmp_path / "home"))
    events = generate_events(400, users=20, start_ms=1_767_225_600_000, mean_gap_ms=20_000, seed=5)
    frame = pd.DataFrame(
        {
            "event_id": events.event_id,
            "user_id": events.user_id,
            "merchant_id": events.merchant_id,
            "amount": events.amount,
            "event_time": events.event_time_ms,
        }
    )
    bad = pd.DataFrame(
        {
            "event_id": ["bad-1", "bad-2"],
            "user_id": [1, 2],
            "merchant_id": [1, 1],
            "amount": [-5.0, 3.0],
            "event_time": [1_767_225_600_000, 5],
        }
    )
    data = pd.concat([frame.iloc[:100], bad, frame.iloc[100:]], ignore_index=True)
    source = tmp_path / f"events.{fmt}"
    if fmt == "csv":
        data.to_csv(source, index=False)
    elif fmt == "parquet":
        data.to_parquet(source)
    else:
        source.write_text("".join(json.dumps(r) + "\n" for r in data.to_dict(orient="records")))
    output = tmp_path / "features.parquet"

    result = CliRunner().invoke(main, ["backfill", "--input", str(source), "--output", str(output)])
    assert result.exit_code == 0, result.output

    rows = pd.read_parquet(output).set_index("event_id").loc[events.event_id]
    stream = Stream(events.user_id, events.event_time_ms, events.amount, events.merchant_id)
    np.testing.assert_allclose(
        rows[NAMES].to_numpy(float), pandas_oracle(stream, DEFAULT_FEATURES), rtol=1e-9
    )
    rejects = [
        json.loads(line) for line in output.with_suffix(".rejects.jsonl").read_text().splitlines()
    ]
    assert [(r["row"], r["reason"]) for r in rejects] == [
        (100, "out_of_range"),
        (101, "timestamp_before_2000"),
    ]

    # Loaded into the offline store: Feast's historical retrieval sees it.
    entity = pd.DataFrame(
        {
            "user_id": events.user_id[-5:],
            "event_timestamp": pd.to_datetime(events.event_time_ms[-5:], unit="ms", utc=True),
        }
    )
    hist = (
        open_store(Settings().stores)
        .get_historical_features(entity_df=entity, features=[f"{FEATURE_VIEW}:txn_count_24h"])
        .to_df()
    )
    assert hist["txn_count_24h"].notna().all()


def test_train_and_models_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.generator import generate_outcomes

    monkeypatch.setenv("FEATFLOW_HOME", str(tmp_path / "home"))
    events = generate_events(6000, users=200, start_ms=1_767_225_600_000, mean_gap_ms=3000, seed=4)
    events_path = tmp_path / "events.jsonl"
    events_path.write_bytes(b"\n".join(v for _, v in events.records()) + b"\n")
    labels_path = tmp_path / "labels.jsonl"
    labels = generate_outcomes(events, seed=4)
    lines = (v for _, v in labels.records(with_probability=True))
    labels_path.write_bytes(b"\n".join(lines) + b"\n")
    runner = CliRunner()

    args = ["train", "--events", str(events_path), "--labels", str(labels_path)]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "registered v0001" in first.output and "promoted: no champion yet" in first.output
    # the labels carry the generator's probability: the ceiling on the same holdout rows
    auc, ceiling = re.search(r"holdout AUC ([0-9.]+); ceiling ([0-9.]+)", first.output).groups()
    assert 0.5 < float(auc) < float(ceiling), first.output
    second = runner.invoke(main, args)  # same data: same AUC, gain 0 >= margin 0
    assert second.exit_code == 0, second.output
    assert "registered v0002" in second.output

    listing = runner.invoke(main, ["models", "list"])
    assert listing.exit_code == 0 and "v0001" in listing.output and "v0002" in listing.output
    shown = json.loads(runner.invoke(main, ["models", "show", "v0001"]).output)
    assert shown["feature_names"] == list(SCORING_FEATURES) and len(shown["sha256"]) == 64
    assert runner.invoke(main, ["models", "rollback"]).exit_code == 0

    model = tmp_path / "home" / "models" / "v0002" / "model.onnx"
    model.write_bytes(model.read_bytes() + b"tampered")
    refused = runner.invoke(main, ["models", "promote", "v0002"])
    assert refused.exit_code != 0 and "sha256" in refused.output
    # a registry edited by hand: one line that says what is wrong, no traceback
    (model.parent / "metadata.json").write_text("{")
    listing = runner.invoke(main, ["models", "list"])
    assert listing.exit_code == 0 and "v0002  damaged:" in listing.output, listing.output
    alias = model.parent.parent / "champion.json"
    alias.write_text("[]")
    for command in (["models", "list"], ["models", "rollback"], ["models", "promote", "v0001"]):
        broken = runner.invoke(main, command)
        assert broken.exit_code == 1 and "not a JSON object" in broken.output, broken.output

    bad_labels = tmp_path / "bad.csv"
    bad_labels.write_text("event_id,label\ne1,2\n")
    result = runner.invoke(main, ["train", "--labels", str(bad_labels)])
    assert result.exit_code != 0 and "not 0 or 1" in result.output


def test_help_imports_nothing_heavy() -> None:
    """`featflow --help` must start at once: the CLI module loads click, not the stack."""
    import subprocess
    import sys

    code = (
        "import sys, featflow.cli\n"
        "heavy = {'numpy', 'pandas', 'kafka', 'feast', 'numba', 'pydantic', 'faust'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
