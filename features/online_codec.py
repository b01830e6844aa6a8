"""Feast's online storage format, encoded in bulk.

Feast's ``write_to_online_store`` builds protobuf objects row by row and runs
about 5-12k rows/s here, below the stream's rate. This module writes the exact
bytes Feast itself writes (entity key serialization v3, ``ValueProto`` values,
``Timestamp`` protos, the SQLite table and the Redis hash layout), deriving
every constant prefix from Feast's own serializers at import time. Tests write
with this codec and read every value back with Feast's ``get_online_features``
and compare stored bytes with Feast's own writer
(``tests/features/test_online_codec.py``).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence

import numpy as np
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from numba import njit, types
from numba.typed import List

from features.feast_repo import ENTITY_KEY_SERIALIZATION_VERSION, JOIN_KEY, feast_type_name
from features.spec import FeatureSpec

_INT64 = struct.Struct("<q")
_DOUBLE = struct.Struct("<d")


@functools.cache
def entity_key_prefix(join_key: str = JOIN_KEY) -> bytes:
    """Feast's serialized entity key of one int64 ``join_key``, without the value's 8 bytes."""
    probe = EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=0)])
    blob = serialize_entity_key(probe, ENTITY_KEY_SERIALIZATION_VERSION)
    assert blob.endswith(_INT64.pack(0)), "unexpected Feast entity key layout"
    return blob[: -_INT64.size]


_DOUBLE_TAG = Value(double_val=1.0).SerializeToString()[: -_DOUBLE.size]
_INT64_TAG = Value(int64_val=1).SerializeToString()[:-1]


def entity_keys(ids: np.ndarray, join_key: str = JOIN_KEY) -> list[bytes]:
    """Feast's serialized entity key of each int64 id of ``join_key``."""
    prefix = entity_key_prefix(join_key)
    return [prefix + _INT64.pack(u) for u in ids.tolist()]


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _plain(spec: FeatureSpec, values: np.ndarray) -> list[int] | list[float]:
    """A feature column as Python numbers of its Feast type."""
    dtype = np.int64 if feast_type_name(spec) == "Int64" else np.float64
    return values.astype(dtype).tolist()


def _serialize(spec: FeatureSpec, plain: list[int] | list[float]) -> list[bytes]:
    if feast_type_name(spec) == "Int64":
        return [_INT64_TAG + _varint(v) for v in plain]
    return [_DOUBLE_TAG + _DOUBLE.pack(v) for v in plain]


def encode_column(spec: FeatureSpec, values: np.ndarray) -> tuple[list[bytes], list[str]]:
    """(serialized ValueProto, value_text) for each value of one feature column (SQLite)."""
    plain = _plain(spec, values)
    return _serialize(spec, plain), [str(v) for v in plain]


def _crlf_bulk(blob: bytes) -> bytes:
    """``blob`` as a RESP bulk string (``$len\r\nblob\r\n``)."""
    return b"$%d\r\n%s\r\n" % (len(blob), blob)


class RedisHsetPacker:
    """``HSET key field value ...`` for many users as one RESP payload, built by a Numba
    loop over the columns.

    Per user written, Python-level packing (a bytes object per value, then joining) cost
    ~8 us, the largest part of the stream worker's online write; this loop costs well under
    1 us (``benchmarks/stream_throughput.py``). The bytes are Feast's own: entity key,
    ``ValueProto`` per feature (``double_val`` = tag + 8 little-endian bytes; ``int64_val`` =
    tag + varint) and the ``Timestamp`` proto (seconds, then nanos, each omitted when 0),
    checked byte for byte against Feast's writer in ``tests/features/test_online_codec.py``.
    Fields go doubles first, then int64s, then the timestamp: a hash does not keep order.
    """

    def __init__(
        self,
        specs: Sequence[FeatureSpec],
        fields: Sequence[bytes],
        ts_field: bytes,
        suffix: bytes,
        join_key: str = JOIN_KEY,
    ):
        key_prefix = entity_key_prefix(join_key)
        is_int = np.array([feast_type_name(s) == "Int64" for s in specs], dtype=bool)
        self._doubles = np.flatnonzero(~is_int)
        self._ints = np.flatnonzero(is_int)
        key_len = len(key_prefix) + _INT64.size + len(suffix)
        n_fields = len(specs) + 1
        self._head = _bytes_array(
            b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%s" % (2 + 2 * n_fields, key_len, key_prefix)
        )
        self._key_tail = _bytes_array(suffix + b"\r\n")
        double_head = b"$%d\r\n%s" % (len(_DOUBLE_TAG) + 8, _DOUBLE_TAG)
        self._double_heads = _heads([_crlf_bulk(fields[j]) + double_head for j in self._doubles])
        self._int_heads = _heads([_crlf_bulk(fields[j]) for j in self._ints])
        self._ts_head = _bytes_array(_crlf_bulk(ts_field))
        assert len(_INT64_TAG) == 1, "unexpected Feast int64 ValueProto layout"
        self._int_tag = _INT64_TAG[0]
        fixed = len(self._head) + 8 + len(self._key_tail) + len(self._ts_head)
        fixed += sum(len(h) + 8 + 2 for h in self._double_heads)
        fixed += sum(len(h) for h in self._int_heads)
        # a variable value: "$NN\r\n" + at most 1 + 10 (int) or 2 + 10 + 1 + 5 (ts) + "\r\n"
        self._row_bound = fixed + 25 * (len(self._int_heads) + 1)

    def pack(self, user_id: np.ndarray, event_time_ms: np.ndarray, features: np.ndarray) -> bytes:
        """The RESP bytes of one HSET per row, as Feast's Redis writer would send them."""
        n = len(user_id)
        out = np.empty(n * self._row_bound, dtype=np.uint8)
        used = _pack_hsets(
            out,
            np.ascontiguousarray(user_id, dtype=np.int64),
            np.ascontiguousarray(event_time_ms, dtype=np.int64),
            np.ascontiguousarray(features[:, self._doubles]).view(np.int64),
            np.ascontiguousarray(features[:, self._ints]).astype(np.int64),
            self._head,
            self._key_tail,
            self._double_heads,
            self._int_heads,
            self._int_tag,
            self._ts_head,
        )
        return out[:used].tobytes()


def _bytes_array(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.uint8).copy()


def _heads(blobs: list[bytes]) -> List:
    """Constant byte strings as a Numba typed list (typed even when empty)."""
    heads = List.empty_list(types.Array(types.uint8, 1, "C"))
    for blob in blobs:
        heads.append(_bytes_array(blob))
    return heads


@njit(cache=True, inline="always")
def _put(out: np.ndarray, pos: int, blob: np.ndarray) -> int:
    for b in range(blob.shape[0]):
        out[pos + b] = blob[b]
    return pos + blob.shape[0]


@njit(cache=True, inline="always")
def _put_le64(out: np.ndarray, pos: int, v: int) -> int:
    for b in range(8):
        out[pos + b] = (v >> (8 * b)) & 0xFF
    return pos + 8


@njit(cache=True, inline="always")
def _varint_len(v: int) -> int:
    u = np.uint64(v)  # negative int64 -> two's complement, as protobuf does
    k = 1
    while u >= np.uint64(0x80):
        u >>= np.uint64(7)
        k += 1
    return k


@njit(cache=True, inline="always")
def _put_varint(out: np.ndarray, pos: int, v: int) -> int:
    u = np.uint64(v)
    while u >= np.uint64(0x80):
        out[pos] = np.uint8((u & np.uint64(0x7F)) | np.uint64(0x80))
        u >>= np.uint64(7)
        pos += 1
    out[pos] = np.uint8(u)
    return pos + 1


@njit(cache=True, inline="always")
def _put_bulk_len(out: np.ndarray, pos: int, n: int) -> int:
    """``$n\r\n`` for 0 <= n < 100 (every value here is at most 19 bytes)."""
    out[pos] = 36  # '$'
    pos += 1
    if n >= 10:
        out[pos] = 48 + n // 10
        pos += 1
    out[pos] = 48 + n % 10
    out[pos + 1] = 13
    out[pos + 2] = 10
    return pos + 3


@njit(cache=True)
def _pack_hsets(
    out, user_id, event_time_ms, doubles, ints, head, key_tail, double_heads, int_heads,
    int_tag, ts_head,
) -> int:  # fmt: skip
    pos = 0
    for i in range(user_id.shape[0]):
        pos = _put(out, pos, head)
        pos = _put_le64(out, pos, user_id[i])
        pos = _put(out, pos, key_tail)
        for j in range(len(double_heads)):
            pos = _put(out, pos, double_heads[j])
            pos = _put_le64(out, pos, doubles[i, j])
            out[pos] = 13
            out[pos + 1] = 10
            pos += 2
        for j in range(len(int_heads)):
            pos = _put(out, pos, int_heads[j])
            v = ints[i, j]
            pos = _put_bulk_len(out, pos, 1 + _varint_len(v))
            out[pos] = int_tag
            pos = _put_varint(out, pos + 1, v)
            out[pos] = 13
            out[pos + 1] = 10
            pos += 2
        pos = _put(out, pos, ts_head)
        ms = event_time_ms[i]
        sec = ms // 1000
        nanos = (ms - sec * 1000) * 1_000_000
        size = 0
        if sec != 0:
            size += 1 + _varint_len(sec)
        if nanos != 0:
            size += 1 + _varint_len(nanos)
        pos = _put_bulk_len(out, pos, size)
        if sec != 0:
            out[pos] = 0x08  # Timestamp.seconds, varint
            pos = _put_varint(out, pos + 1, sec)
        if nanos != 0:
            out[pos] = 0x10  # Timestamp.nanos, varint
            pos = _put_varint(out, pos + 1, nanos)
        out[pos] = 13
        out[pos + 1] = 10
        pos += 2
    return pos


def redis_field_keys(view: str, specs: Sequence[FeatureSpec]) -> list[bytes]:
    """Redis hash field of each feature (murmur3 of ``view:feature``, as Feast names them)."""
    return [_mmh3(f"{view}:{s.name}") for s in specs]
