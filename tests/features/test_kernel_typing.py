"""The memoised Numba type of KernelState equals Numba's own typing of the same tuple.

features/kernels/layout.py registers a faster typeof for KernelState (the dispatcher's own
path types its typed containers field by field in Python, ~0.1-0.2 ms a call). A wrong memo
key would hand a kernel a type that does not describe the arrays it gets, so each case
compares with Numba's tuple typing and changes one input of the key.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba.core.typing.typeof import Purpose, _TypeofContext, typeof_impl

from features.kernels import KernelState
from features.spec import DEFAULT_FEATURES, DEFAULT_LATENESS_MS
from features.state import WindowState


def _numbas_own(val: KernelState):
    """What Numba's registered tuple typing says (the memo bypassed)."""
    return typeof_impl.dispatch(tuple)(val, _TypeofContext(Purpose.argument))


def _memoised(val: KernelState):
    return typeof_impl.dispatch(KernelState)(val, _TypeofContext(Purpose.argument))


@pytest.fixture(scope="module")
def state() -> KernelState:
    ws = WindowState(DEFAULT_FEATURES, lateness_ms=DEFAULT_LATENESS_MS)
    n = 200
    ws.update(np.arange(n) % 7, np.arange(n) * 1000, np.ones(n), np.arange(n) % 5)
    return ws._st


def test_registered_for_kernel_state() -> None:
    assert typeof_impl.dispatch(KernelState) is not typeof_impl.dispatch(tuple)


def test_memo_equals_numbas_typing(state: KernelState) -> None:
    assert _memoised(state) == _numbas_own(state)
    assert _memoised(state) == _numbas_own(state)  # second call: from the memo


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda a: np.asfortranarray(a), id="fortran-order"),
        pytest.param(lambda a: a[:, ::2], id="strided"),
        pytest.param(lambda a: a.astype(np.int32), id="dtype"),
        pytest.param(lambda a: a.ravel(), id="ndim"),
        pytest.param(lambda a: _readonly(a), id="read-only"),
    ],
)
def test_each_key_input_changes_the_type(state: KernelState, change) -> None:
    changed = state._replace(seg=change(state.seg.copy()))
    assert _memoised(changed) == _numbas_own(changed)
    assert _memoised(changed) != _memoised(state)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a
