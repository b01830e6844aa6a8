"""Finding the records that make a batch step fail, so one bad record never stops a stream.

Columnar steps run on a whole batch at once, so an unexpected exception names the batch,
not the record. :func:`isolate` reruns the failing range in halves, in order, until each
failure is pinned to one record; every other record is processed exactly once, in arrival
order, as long as the step keeps its side of the contract: **it raises before it changes
anything** (validate first, then mutate). A poison record then costs about
``2 * log2(batch)`` extra calls of shrinking size, and only when one is there.

>>> def step(lo, hi):
...     if 3 in range(lo, hi):
...         raise ValueError("three is poison")
...     return list(range(lo, hi))
>>> failed = []
>>> isolate(6, step, lambda i, exc: failed.append((i, str(exc))))
[(0, 3, [0, 1, 2]), (4, 6, [4, 5])]
>>> failed
[(3, 'three is poison')]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DETAIL_MAX_CHARS = 1000  # a dead-letter header, not a log: tracebacks stay in the log


def describe(exc: BaseException) -> str:
    """The exception as a dead letter's detail: its type and message, bounded."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= DETAIL_MAX_CHARS else text[: DETAIL_MAX_CHARS - 3] + "..."


def isolate(
    n: int,
    step: Callable[[int, int], T],
    on_failure: Callable[[int, Exception], None],
) -> list[tuple[int, int, T]]:
    """Run ``step(lo, hi)`` over rows ``[0, n)`` in order; return ``(lo, hi, result)`` per
    successful range. A single row whose step raises goes to ``on_failure(row, exc)``."""
    done: list[tuple[int, int, T]] = []
    pending = [(0, n)] if n else []  # a stack, right half pushed first: left runs first
    while pending:
        lo, hi = pending.pop()
        try:
            done.append((lo, hi, step(lo, hi)))
        except Exception as exc:
            if hi - lo == 1:
                on_failure(lo, exc)
            else:
                mid = (lo + hi) // 2
                pending.append((mid, hi))
                pending.append((lo, mid))
    return done
