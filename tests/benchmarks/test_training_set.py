"""``benchmarks/training_set.py`` at a tiny size, and the limits its Feast tries run under.

The benchmark's figures come from child processes reaped one by one (``os.wait4``), so each
peak RSS is that child's own; a Feast try must end cleanly when it passes its address-space
limit or its timeout instead of taking the machine down.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks import training_set


def test_tiny_run_builds_one_row_per_label() -> None:
    results = training_set.main(
        ["--sizes", "2000", "--build-repeats", "1", "--no-train", "--feast-sizes"]
    )
    assert results["build_2000_s"] > 0
    assert 0 < results["build_2000_mib"] < 1000


def test_child_limits_end_a_try(tmp_path: Path) -> None:
    hog = [sys.executable, "-c", "b = bytearray(2 * 1024**3)"]
    run = training_set.run_child(
        hog, scratch=tmp_path, report=None, timeout_s=30, address_space=512 * 1024**2
    )
    assert run.failure is not None and "MemoryError" in run.failure
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    run = training_set.run_child(sleeper, scratch=tmp_path, report=None, timeout_s=0.5)
    assert run.failure == "timed out after 0.5 s"
    assert run.wall_s < 10
    ok = [sys.executable, "-c", "b = bytearray(200 * 1024**2); b[::4096] = b'x' * len(b[::4096])"]
    run = training_set.run_child(ok, scratch=tmp_path, report=None, timeout_s=30)
    assert run.failure is None and 200 < run.peak_mib < 400
