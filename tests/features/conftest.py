"""Kernel tuning modes for the feature tests.

A :class:`features.kernels.Tuning` only moves work between the scan path and the
incremental path (and between scanning and hashing for distinct), so every mode must match
the oracles. The default thresholds keep small test streams on the scan path; the other
modes force the incremental path, its hash-map and scan variants, and constant
promote/demote transitions. Out-of-order rows of promoted entities are derived from the
incremental state in every window in the incremental modes (however far behind the
entity's max time they are), and per window by cost when flapping. Tests pass the mode to
``WindowState(..., tuning=...)``.
"""

from __future__ import annotations

import pytest

from features.kernels import DEFAULT_TUNING, Tuning

TUNINGS: dict[str, Tuning] = {
    "default": DEFAULT_TUNING,
    # every entity incremental from its first row; distinct through the hash map
    "incremental": Tuning(
        promote_above=0,
        demote_below=0,
        dist_index_above=0,
        dist_unindex_below=0,
        late_scan_factor=0,
    ),
    # every entity incremental; distinct by scanning the window for previous occurrences
    "incremental_scan": Tuning(
        promote_above=0,
        demote_below=0,
        dist_index_above=1 << 40,
        dist_unindex_below=0,
        late_scan_factor=0,
    ),
    # promote/demote and index/unindex all the time
    "flapping": Tuning(
        promote_above=2,
        demote_below=2,
        dist_index_above=2,
        dist_unindex_below=2,
        late_scan_factor=1,
    ),
}


@pytest.fixture(params=list(TUNINGS.values()), ids=list(TUNINGS))
def tuning(request: pytest.FixtureRequest) -> Tuning:
    """Each tuning mode in turn (the test passes it to the WindowState it builds)."""
    return request.param
