"""Every decoder a topic feeds, fuzzed with 10,000 generated batches each: hostile bytes,
JSON of any shape, valid records with one field swapped for an edge value (NaN and
Infinity spelled out, int64 edges, unicode and control characters, huge strings, deep
nesting), oversized records and foreign Arrow streams.

The property is the product's promise for bad input: nothing raises (one record must not
stop a worker), every record is either accepted or dead-lettered with a reason and its
original key and bytes, and what is accepted obeys the contract. Events and merchant rows
go through the partition processors, the workers' whole hot path (decode, window kernels,
refusals), not the decoders alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from features.spec import DEFAULT_FEATURES, DEFAULT_LATENESS_MS
from infra.dead_letter import DeadLetter, Reason
from infra.events import MIN_EVENT_TIME_MS, EventRules
from infra.merchant_rows import SCHEMA as MERCHANT_SCHEMA
from infra.outcomes import decode_outcomes
from infra.predictions import decode_predictions
from infra.retrain import decode_requests
from streams.merchant_processor import MerchantProcessor
from streams.processor import PartitionProcessor

CASES = 10_000
NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
RULES = EventRules()
fuzz = settings(
    max_examples=CASES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@dataclass(frozen=True)
class Rec:
    offset: int
    key: bytes | None
    value: bytes | None


# -- what a hostile producer sends ---------------------------------------------------

# Values JSON can spell that a decoder must judge: edges of int64 and float, NaN and the
# infinities as bare words (not JSON, but what some encoders write), hostile strings.
EDGES = [
    "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e308", "-0.0", "0", "-1",
    str(2**63 - 1), str(-(2**63)), str(2**63), str(-(2**63) - 1), str(2**64), "1.5e-320",
    '""', '"\\u0000"', '"\\ud800"', '"\\u202e\\u0007 evil"', '"' + "x" * 5000 + '"', '"\\n\\t"',
    '"\U0001f4a9"', "null", "true", "[]", "{}", '"2026-01-01T00:00:00Z"', '"2026-13-45"',
    '"9999-12-31T23:59:59Z"', '"0001-01-01T00:00:00Z"', "[" * 3000 + "]" * 3000,
]  # fmt: skip

json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
).map(lambda v: json.dumps(v).encode())


def _spliced(template: dict[str, object]) -> st.SearchStrategy[bytes]:
    """``template`` with one field set to an edge value, dropped, or duplicated with
    another value (JSON objects may repeat a key; the last one wins in most decoders)."""
    names = sorted(template)

    def build(name: str, edge: str, how: str) -> bytes:
        fields = {k: json.dumps(v) for k, v in template.items()}
        if how == "set":
            fields[name] = edge
        elif how == "drop":
            del fields[name]
        body = ", ".join(f'"{k}": {v}' for k, v in fields.items())
        if how == "repeat":
            body += f', "{name}": {edge}'
        return ("{" + body + "}").encode("utf-8", "surrogatepass")

    how = st.sampled_from(["set", "drop", "repeat"])
    return st.builds(build, st.sampled_from(names), st.sampled_from(EDGES), how)


def hostile(template: dict[str, object]) -> st.SearchStrategy[bytes | None]:
    """One record's value: mostly hostile, sometimes the valid ``template`` itself."""
    valid = json.dumps(template).encode()
    return st.one_of(
        st.none(),
        st.binary(max_size=64),
        st.text(max_size=64).map(lambda s: s.encode("utf-8", "surrogatepass")),
        json_docs,
        _spliced(template),
        _spliced(template),  # weighted: the cases nearest to valid find the most
        st.just(valid),
        st.just(valid[:-1]),  # truncated
        st.integers(RULES.max_record_bytes - 8, RULES.max_record_bytes + 8).map(
            lambda n: valid[:-1] + b', "pad": "' + b"x" * max(n - len(valid) - 10, 0) + b'"}'
        ),  # at the size limit, either side
    )


def batches(template: dict[str, object]) -> st.SearchStrategy[list[Rec]]:
    """A fetch of up to 8 records with keys of any bytes, offsets ascending."""
    record = st.tuples(st.none() | st.binary(max_size=12), hostile(template))
    return st.lists(record, max_size=8).map(
        lambda pairs: [Rec(i, k, v) for i, (k, v) in enumerate(pairs)]
    )


def assert_accounted(
    records: list[Rec],
    accepted_offsets: list[int],
    dead: list[DeadLetter],
    copies: list[int] = (),  # type: ignore[assignment]
):
    """Each record accepted, dead-lettered or (``copies``) counted as a copy once, a letter
    keeping its bytes, key and why."""
    got = sorted([*accepted_offsets, *(d.offset for d in dead), *copies])
    assert got == [r.offset for r in records]
    by_offset = {r.offset: r for r in records}
    for d in dead:
        assert d.reason in set(Reason) and d.detail
        assert (d.value, d.key) == (by_offset[d.offset].value, by_offset[d.offset].key)
        d.headers()  # the headers encode (a detail with any characters)


# -- the topics ----------------------------------------------------------------------

EVENT = {"event_id": "e1", "user_id": 7, "merchant_id": 3, "amount": 12.5, "event_time": NOW - 1}


_TWICE = [Rec(i, b"7", json.dumps(EVENT).encode()) for i in range(2)]


@fuzz
@given(batches(EVENT))
@example(_TWICE)  # a producer's retry: the second is a counted copy (found by hypothesis)
def test_events_through_the_partition_processor(records: list[Rec]) -> None:
    processor = PartitionProcessor(
        topic="events", partition=0, specs=DEFAULT_FEATURES, lateness_ms=DEFAULT_LATENESS_MS
    )
    effects = processor.process(records, now_ms=NOW)
    good = effects.accepted
    # the rest are duplicates (``features.kernels.dedupe``): counted, each a copy of an
    # earlier accepted event of the same user and id (hypothesis found two equal records)
    settled = {*good.offset.tolist(), *(d.offset for d in effects.dead_letters)}
    copies = [r.offset for r in records if r.offset not in settled]
    assert len(copies) == effects.counts.duplicates
    ids = dict(zip(good.offset.tolist(), zip(good.user_id.tolist(), good.ids(), strict=True),
                   strict=True))  # fmt: skip
    for offset in copies:
        copy = json.loads(records[offset].value)
        assert any(o < offset and ids[o] == (copy["user_id"], copy["event_id"]) for o in ids)
    assert_accounted(records, good.offset.tolist(), effects.dead_letters, copies)
    assert np.isfinite(effects.features).all()
    assert ((good.amount >= 0) & (good.amount <= RULES.max_amount)).all()
    t = good.event_time_ms
    assert ((t >= MIN_EVENT_TIME_MS) & (t <= NOW + RULES.max_future_skew_ms)).all()
    assert all(len(i) > 0 for i in good.ids())
    if records:
        assert processor.offset == records[-1].offset


OUTCOME = {"event_id": "e1", "user_id": 7, "label": 1, "outcome_time": NOW - 1, "merchant_id": 3}


@fuzz
@given(batches(OUTCOME))
def test_outcomes(records: list[Rec]) -> None:
    table, dead = decode_outcomes(
        [r.value for r in records],
        keys=[r.key for r in records],
        partitions=[0] * len(records),
        offsets=[r.offset for r in records],
        now_ms=NOW,
    )
    assert_accounted(records, table.column("kafka_offset").to_pylist(), dead)
    assert set(table.column("label").to_pylist()) <= {0, 1}


PREDICTION = {
    "prediction_id": "p1", "user_id": 7, "score": 0.25, "model_version": "v1",
    "event_id": "e1", "event_time": NOW, "features": {"amount": 3.0},
}  # fmt: skip


def _decoded(decode, records: list[Rec]) -> list:
    """The records ``decode`` accepted (a list in order), after checking the accounting."""
    good, dead = decode(
        [r.value for r in records],
        keys=[r.key for r in records],
        partitions=[0] * len(records),
        offsets=[r.offset for r in records],
    )
    refused = {d.offset for d in dead}
    assert_accounted(records, [r.offset for r in records if r.offset not in refused], dead)
    assert len(good) == len(records) - len(dead)
    return good


@fuzz
@given(batches(PREDICTION))
def test_predictions(records: list[Rec]) -> None:
    for p in _decoded(decode_predictions, records):
        assert 0.0 <= p.score <= 1.0 and p.time_ms >= MIN_EVENT_TIME_MS
        assert all(np.isfinite(v) for v in p.features.values())


REQUEST = {"request_id": "r1", "time_ms": NOW, "model_version": "v1", "values": {"auc": 0.6}}


@fuzz
@given(batches(REQUEST))
def test_retrain_requests(records: list[Rec]) -> None:
    for r in _decoded(decode_requests, records):
        assert r.time_ms >= MIN_EVENT_TIME_MS and all(np.isfinite(v) for v in r.values.values())


# -- merchant_rows: Arrow streams, featflow's own internal topic ---------------------

_INT64_EDGES = [0, 1, -1, 2**63 - 1, -(2**63), 2**31, MIN_EVENT_TIME_MS, NOW]
_FLOAT_EDGES = [0.0, -0.0, 1.0, -1.0, 1e308, -1e308, float("nan"), float("inf"), 5e-324]


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _column_values(field: pa.Field) -> st.SearchStrategy[object]:
    if pa.types.is_floating(field.type):
        return st.sampled_from(_FLOAT_EDGES) | st.floats()
    if pa.types.is_string(field.type):
        return st.sampled_from(["", "e1", "\x00", "\U0001f4a9" * 50]) | st.text(max_size=8)
    info = np.iinfo(field.type.to_pandas_dtype())
    edges = [int(np.clip(v, info.min, info.max)) for v in _INT64_EDGES]
    return st.sampled_from(edges) | st.integers(int(info.min), int(info.max))


_COLUMNS = [(field, _column_values(field)) for field in MERCHANT_SCHEMA]
_FOREIGN = _ipc(pa.table({"x": [1, 2]}))


@st.composite
def merchant_record(draw: st.DrawFn) -> bytes | None:
    """An Arrow stream of the merchant_rows schema with edge values in every column, or
    one that is truncated, of another schema, or not Arrow at all."""
    n = draw(st.integers(0, 6))
    columns = {
        field.name: pa.array(draw(st.lists(values, min_size=n, max_size=n)), field.type)
        for field, values in _COLUMNS
    }
    data = _ipc(pa.table(columns, schema=MERCHANT_SCHEMA))
    how = draw(st.sampled_from(["whole", "whole", "truncated", "foreign", "bytes", "none"]))
    return {
        "whole": data,
        "truncated": data[: len(data) // 2],
        "foreign": _FOREIGN,
        "bytes": bytes(range(256)),
        "none": None,
    }[how]


_MERCHANTS = MerchantProcessor(topic="merchant_rows", partition=0)


@fuzz
@given(st.lists(merchant_record(), max_size=4))
def test_merchant_rows_through_the_merchant_processor(values: list[bytes | None]) -> None:
    # one processor for every case (a fresh state per case took most of the time): the
    # state meets all the hostile rows that came before, as a long-running worker would
    processor = _MERCHANTS
    start = processor.offset + 1
    records = [Rec(start + i, None, v) for i, v in enumerate(values)]
    effects = processor.process(records)
    letters = {d.offset for d in effects.dead_letters}
    assert all(d.reason == Reason.SCHEMA and d.detail for d in effects.dead_letters)
    # a record is dead-lettered whole or applied whole (its rows refused one by one)
    assert len(letters) == len(effects.dead_letters)
    for view in (effects.activity, effects.outcomes):
        for table in view.offline:
            for name in table.column_names:
                column = table.column(name)
                if pa.types.is_floating(column.type):
                    assert np.isfinite(column.to_numpy(zero_copy_only=False)).all(), name
