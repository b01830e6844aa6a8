"""numpy <-> Arrow for flat columns, without pyarrow's pandas interop.

pyarrow's own conversions (``Array.to_numpy``, ``pa.array(ndarray)``, even
``pa.from_numpy_dtype``) initialise its pandas integration on first use, which imports
pandas: 0.2-0.4 s, a fifth of a 10k-row ``featflow backfill`` that never needs pandas.
A fixed-width column without nulls needs no conversion at all: numpy reads Arrow's buffer
through DLPack and Arrow wraps numpy's (``tests/infra/test_arrow.py`` checks both ways and
that pandas stays unimported).

>>> col = from_numpy(np.array([3, 1, 2]), pa.int64())
>>> to_numpy(col).tolist()
[3, 1, 2]
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_ARROW_OF = {
    np.dtype(np.int64): pa.int64(),
    np.dtype(np.int32): pa.int32(),
    np.dtype(np.float64): pa.float64(),
}


def to_numpy(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A read-only numpy view of a fixed-width column without nulls (a copy where it has
    several chunks; booleans, which Arrow packs into bits, come as a writable copy)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        raise ValueError(f"a {arr.type} column with {arr.null_count} nulls: fill them first")
    if pa.types.is_boolean(arr.type):
        return np.from_dlpack(pc.cast(arr, pa.uint8())).view(np.bool_).copy()
    if pa.types.is_timestamp(arr.type):
        arr = arr.view(pa.int64())
    return np.from_dlpack(arr)


def from_numpy(values: np.ndarray, kind: pa.DataType | None = None) -> pa.Array:
    """An Arrow array over ``values`` (int64, int32 or float64; no copy when contiguous),
    typed ``kind`` where given: a timestamp over int64, say."""
    values = np.ascontiguousarray(values)
    if values.ndim != 1 or values.dtype not in _ARROW_OF:
        raise TypeError(f"a 1-D int64, int32 or float64 array, got {values.dtype}{values.shape}")
    kind = kind or _ARROW_OF[values.dtype]
    if kind.bit_width != values.dtype.itemsize * 8:
        raise TypeError(f"{values.dtype} values cannot be read as {kind}")
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])
