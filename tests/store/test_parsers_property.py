"""Property tests: the store's parsers turn any bytes into a result or an IntegrityError.

Pack footer and header, sealed blobs, zstd payloads and snapshot records are read
back from storage that may be damaged or hostile; random and mutated input must
raise a Lamina error, never another exception (finding 4 of the review).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from lamina.errors import IntegrityError, LaminaError
from lamina.store import blob
from lamina.store.blob import BlobKind
from lamina.store.catalog import SnapshotRecord
from lamina.store.keys import StoreKeys, dump_keys, parse_keys
from lamina.store.pack import (
    FOOTER,
    HEADER_AAD,
    MAGIC,
    PACK_VERSION,
    PackWriter,
    parse_footer,
    parse_header,
    read_entries,
)
from lamina.store.snapshot import decode_snapshot, encode_snapshot
from tests.strategies import PARSER_SETTINGS, msgpack_values, mutations, packb

_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)

DATA_KEY = bytes(range(32))
ID_KEY = bytes(range(32, 64))
BID = bytes(32)


def _pack() -> bytes:
    w = PackWriter(DATA_KEY)
    for i in range(3):
        data = bytes([i]) * 500 + os.urandom(20)
        bid, sealed = blob.seal_plain(DATA_KEY, ID_KEY, BlobKind.DATA, data)
        w.add(BlobKind.DATA, bid, sealed, len(data))
    return w.finish().data


PACK = _pack()


def _refuses(fn: Any, *args: Any) -> None:
    with contextlib.suppress(LaminaError):
        fn(*args)


@PARSER_SETTINGS
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=2**40))
def test_random_footers_raise_integrity_errors(tail: bytes, size: int) -> None:
    try:
        n = parse_footer(tail, size)
    except IntegrityError:
        return
    assert n >= 0 and n + FOOTER.size <= size


@PARSER_SETTINGS
@given(st.binary(max_size=400))
def test_random_packs_raise_integrity_errors(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        read_entries(DATA_KEY, data)


@PARSER_SETTINGS
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=2**32))
def test_random_pack_footers_with_magic_raise_integrity_errors(body: bytes, hlen: int) -> None:
    data = body + FOOTER.pack(MAGIC, PACK_VERSION, hlen)
    with pytest.raises(IntegrityError):
        read_entries(DATA_KEY, data)


@PARSER_SETTINGS
@given(st.data())
def test_mutated_packs_read_or_raise_integrity_errors(data: st.DataObject) -> None:
    mutated = data.draw(mutations(PACK))
    try:
        entries = read_entries(DATA_KEY, mutated)
    except IntegrityError:
        return
    # A mutation inside the blob area leaves the header intact: blobs then fail on open.
    for e in entries:
        with contextlib.suppress(IntegrityError):
            blob.open_sealed(
                DATA_KEY,
                ID_KEY,
                e.kind,
                e.id,
                mutated[e.offset : e.offset + e.length],
                e.raw_length,
            )


@PARSER_SETTINGS
@given(msgpack_values())
def test_authentic_headers_with_random_tables_raise_integrity_errors(table: Any) -> None:
    """The header is authenticated, but a writer's bug must not crash a reader either."""
    nonce = bytes(12)
    sealed = nonce + AESGCM(DATA_KEY).encrypt(nonce, packb(table), HEADER_AAD)
    try:
        entries = parse_header(DATA_KEY, sealed, 10_000)
    except IntegrityError:
        return
    assert all(e.offset + e.length <= 10_000 for e in entries)


@PARSER_SETTINGS
@given(
    st.lists(
        st.lists(
            st.one_of(st.integers(-5, 2**64 - 1), st.booleans(), st.binary(max_size=33)),
            min_size=5,
            max_size=5,
        ),
        max_size=5,
    )
)
def test_authentic_headers_with_random_rows_raise_integrity_errors(rows: list[Any]) -> None:
    nonce = bytes(12)
    sealed = nonce + AESGCM(DATA_KEY).encrypt(nonce, packb(rows), HEADER_AAD)
    _refuses(parse_header, DATA_KEY, sealed, 10_000)


@PARSER_SETTINGS
@given(st.binary(max_size=200), st.sampled_from(list(BlobKind)))
def test_random_sealed_blobs_raise_integrity_errors(sealed: bytes, kind: BlobKind) -> None:
    with pytest.raises(IntegrityError):
        blob.open_sealed(DATA_KEY, ID_KEY, kind, BID, sealed, 100)


@PARSER_SETTINGS
@given(st.data())
def test_mutated_sealed_blobs_raise_integrity_errors(data: st.DataObject) -> None:
    plain = b"lamina " * 100
    bid, sealed = blob.seal_plain(DATA_KEY, ID_KEY, BlobKind.TREE, plain)
    with pytest.raises(IntegrityError):
        blob.open_sealed(DATA_KEY, ID_KEY, BlobKind.TREE, bid, data.draw(mutations(sealed)), 700)


@PARSER_SETTINGS
@given(
    st.integers(min_value=-1, max_value=3),
    st.binary(max_size=200),
    st.integers(min_value=-(2**63), max_value=2**63),
)
def test_random_payloads_decompress_or_raise_integrity_errors(
    flag: int, payload: bytes, raw_length: int
) -> None:
    try:
        out = blob.decompress(flag, payload, raw_length)
    except IntegrityError:
        return
    assert len(out) == raw_length


@PARSER_SETTINGS
@given(st.data())
def test_mutated_zstd_frames_decompress_or_raise_integrity_errors(data: st.DataObject) -> None:
    plain = b"abc" * 1000
    flag, payload = blob.compress(plain)
    assert flag == blob.FLAG_ZSTD
    try:
        out = blob.decompress(flag, data.draw(mutations(payload)), len(plain))
    except IntegrityError:
        return
    assert len(out) == len(plain)


@PARSER_SETTINGS
@given(st.binary(max_size=200))
def test_random_snapshot_records_raise_integrity_errors(data: bytes) -> None:
    _refuses(decode_snapshot, BID, data)


@PARSER_SETTINGS
@given(msgpack_values(["v", "time", "source", "root", "files", "bytes", "meta"]))
def test_random_snapshot_documents_raise_integrity_errors(doc: Any) -> None:
    _refuses(decode_snapshot, BID, packb(doc))


@PARSER_SETTINGS
@given(
    st.fixed_dictionaries(
        {"v": st.just(1)},
        optional={
            k: msgpack_values() for k in ("time", "source", "root", "files", "bytes", "meta")
        },
    )
)
def test_snapshot_records_with_random_fields_raise_integrity_errors(doc: dict[str, Any]) -> None:
    _refuses(decode_snapshot, BID, packb(doc))


def test_a_snapshot_record_round_trips() -> None:
    rec = SnapshotRecord("", dt.datetime.now(dt.UTC), "src", bytes(32), 3, 4, {"a": 1})
    back = decode_snapshot(BID, encode_snapshot(rec))
    assert (back.root, back.files, back.bytes, back.meta) == (rec.root, 3, 4, {"a": 1})


@pytest.mark.parametrize(
    "over",
    [
        {"root": 10**6},  # bytes(10**6) was a "valid" 1 MB root
        {"root": b"short"},
        {"files": 2.5},
        {"files": float("inf")},
        {"bytes": -1},
        {"time": 7},
        {"meta": [1]},
        {"source": b"raw"},
    ],
)
def test_snapshot_records_with_wrong_field_types_are_refused(over: dict[str, Any]) -> None:
    rec = SnapshotRecord("", dt.datetime.now(dt.UTC), "src", bytes(32), 3, 4, {})
    doc = {**msgpack.unpackb(encode_snapshot(rec)), **over}
    with pytest.raises(IntegrityError):
        decode_snapshot(BID, packb(doc))


@pytest.mark.parametrize("flag", [blob.FLAG_RAW, blob.FLAG_ZSTD])
def test_a_negative_raw_length_is_refused(flag: int) -> None:
    payload = blob.compress(b"x" * 100)[1] if flag == blob.FLAG_ZSTD else b""
    with pytest.raises(IntegrityError, match="negative"):
        blob.decompress(flag, payload, -1)


# --- key files --------------------------------------------------------------------------------

_GOOD_KEYS = json.loads(dump_keys(StoreKeys.generate()))


@PARSER_SETTINGS
@given(st.binary(max_size=200))
def test_random_key_files_raise_store_key_errors(raw: bytes) -> None:
    with pytest.raises(LaminaError):
        parse_keys(raw)


@PARSER_SETTINGS
@given(
    st.fixed_dictionaries(
        {},
        optional={
            k: st.one_of(st.just(_GOOD_KEYS[k]), _json_values)
            for k in ("lamina_keyfile", "store_id", "chunker", "sealed", "secret")
        },
    ),
    st.sampled_from(["min", "avg", "max", "chunker_seed", "id_key", "data_key", None]),
    _json_values,
)
def test_key_files_with_random_fields_load_or_raise_lamina_errors(
    doc: dict[str, Any], spoil: str | None, value: Any
) -> None:
    doc = {**_GOOD_KEYS, **doc, "sealed": False}
    if spoil in ("min", "avg", "max") and isinstance(doc.get("chunker"), dict):
        doc["chunker"] = {**doc["chunker"], spoil: value}
    elif spoil is not None and isinstance(doc.get("secret"), dict):
        doc["secret"] = {**doc["secret"], spoil: value}
    try:
        keys = parse_keys(json.dumps(doc).encode())
    except LaminaError:
        return
    assert len(keys.data_key) == 32


@pytest.mark.parametrize("size", ["abc", float("inf"), -1, 2**40])
def test_a_key_file_with_a_bad_chunk_size_is_refused(size: Any) -> None:
    doc = {**_GOOD_KEYS, "chunker": {**_GOOD_KEYS["chunker"], "avg": size}}
    with pytest.raises(LaminaError):
        parse_keys(json.dumps(doc).encode())
