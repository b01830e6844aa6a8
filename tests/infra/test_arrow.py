"""infra/arrow.py against pyarrow's own conversions, and pandas left unimported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from infra.arrow import from_numpy, to_numpy
from streams.generator import generate_events

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (np.array([3, -1, 2**62], dtype=np.int64), None),
        (np.array([7, 0, -(2**31)], dtype=np.int32), None),
        (np.array([0.5, -1e300, np.inf, -0.0]), None),
        (np.array([1_767_225_600_000, 0], dtype=np.int64), pa.timestamp("ms", tz="UTC")),
        (np.arange(10, dtype=np.int64)[::3], None),  # strided: copied to contiguous
    ],
)
def test_from_numpy_equals_pa_array(values: np.ndarray, kind: pa.DataType | None) -> None:
    got = from_numpy(values, kind)
    assert got.equals(pa.array(values, type=kind))
    assert np.array_equal(to_numpy(got), values, equal_nan=True)


def test_to_numpy_of_chunks_booleans_and_slices() -> None:
    chunked = pa.chunked_array([pa.array([1, 2]), pa.array([3])], type=pa.int64())
    assert to_numpy(chunked).tolist() == [1, 2, 3]
    flags = pa.array([True, False, True, True, False, False, True, False, True])
    got = to_numpy(flags.slice(1))
    assert got.dtype == np.bool_ and got.tolist() == flags.slice(1).to_pylist()
    got &= False  # booleans come as a writable copy
    assert to_numpy(pa.array(np.arange(6)).slice(2, 3)).tolist() == [2, 3, 4]


def test_refusals() -> None:
    with pytest.raises(ValueError, match="nulls"):
        to_numpy(pa.array([1, None]))
    with pytest.raises(TypeError, match="int64, int32 or float64"):
        from_numpy(np.array([True]))
    with pytest.raises(TypeError, match="cannot be read as"):
        from_numpy(np.array([1], dtype=np.int32), pa.int64())
    assert to_numpy(pc.fill_null(pa.array([1, None]), 0)).tolist() == [1, 0]
    assert np.isnan(to_numpy(from_numpy(np.array([np.nan])))[0])  # NaN is a value, not null


def test_a_parquet_backfill_imports_neither_pandas_nor_kafka(tmp_path: Path) -> None:
    """What `featflow backfill --no-store` loads (0.2-0.4 s each, of a 1 s job)."""
    ev = generate_events(3000, users=50, start_ms=1_767_225_600_000, mean_gap_ms=1000, seed=2)
    pq.write_table(ev.table(), tmp_path / "in.parquet")
    script = textwrap.dedent(
        f"""
        import sys
        from featflow.cli import main
        sys.argv = ["featflow", "backfill", "--input", {str(tmp_path / "in.parquet")!r},
                    "--output", {str(tmp_path / "out.parquet")!r}, "--no-store"]
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
        print(sorted(m for m in ("pandas", "kafka", "feast", "scipy.stats") if m in sys.modules))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HOME": str(tmp_path), "FEATFLOW_HOME": str(tmp_path / "home"), "PATH": ""},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 3000
