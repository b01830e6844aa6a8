"""Kernel tuning modes for the feature tests.

``features.kernels.TUNING`` only moves work between the scan path and the incremental path
(and between scanning and hashing for distinct), so every mode must match the oracles. The
default thresholds keep small test streams on the scan path; the other modes force the
incremental path, its hash-map and scan variants, and constant promote/demote transitions.
Out-of-order rows of promoted entities are derived from the incremental state in every
window in the incremental modes (however far behind the entity's max time they are), and
per window by cost when flapping.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from features import kernels as K

TUNINGS: dict[str, dict[str, int]] = {
    "default": dict(K.TUNING),
    # every entity incremental from its first row; distinct through the hash map
    "incremental": {
        "promote_above": 0,
        "demote_below": 0,
        "dist_index_above": 0,
        "dist_unindex_below": 0,
        "late_scan_factor": 0,
    },
    # every entity incremental; distinct by scanning the window for previous occurrences
    "incremental_scan": {
        "promote_above": 0,
        "demote_below": 0,
        "dist_index_above": 1 << 40,
        "dist_unindex_below": 0,
        "late_scan_factor": 0,
    },
    # promote/demote and index/unindex all the time
    "flapping": {
        "promote_above": 2,
        "demote_below": 2,
        "dist_index_above": 2,
        "dist_unindex_below": 2,
        "late_scan_factor": 1,
    },
}


@contextlib.contextmanager
def use_tuning(name: str) -> Iterator[None]:
    saved = K.TUNING
    K.TUNING = TUNINGS[name]
    try:
        yield
    finally:
        K.TUNING = saved


@pytest.fixture(params=list(TUNINGS))
def tuning(request: pytest.FixtureRequest) -> Iterator[str]:
    with use_tuning(request.param):
        yield request.param
