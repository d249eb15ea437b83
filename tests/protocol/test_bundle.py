"""The bundle codec: round trip, and property tests on hostile bytes (finding 4)."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lamina.errors import IntegrityError, LaminaError, TooLargeError
from lamina.protocol.bundle import (
    BUNDLE_VERSION,
    PART_BYTES,
    BundleBlob,
    bundle_parts,
    decode_bundle,
    encode_bundle,
)
from tests.strategies import PARSER_SETTINGS, msgpack_values, mutations, packb

GOOD = [BundleBlob(0, os.urandom(32), 0, b"payload", 7), BundleBlob(1, os.urandom(32), 1, b"", 0)]


def _decodes_or_refuses(data: bytes) -> None:
    try:
        blobs = decode_bundle(data)
    except LaminaError:
        return
    for b in blobs:
        assert isinstance(b.id, bytes) and len(b.id) == 32
        assert isinstance(b.payload, bytes) and b.raw_length >= 0


def test_round_trip() -> None:
    assert decode_bundle(encode_bundle(GOOD)) == GOOD


@pytest.mark.parametrize(
    ("count", "sizes"),
    [
        (0, [0]),
        (1, [PART_BYTES * 3 + 5]),
        (15, [0, 1, 255, 256, 65535, 65536]),  # msgpack's fixarray, bin 8, 16 and 32
        (16, [PART_BYTES - 1, PART_BYTES, PART_BYTES + 1, 4 * 1024 * 1024]),
        (17, [0, 100, PART_BYTES // 2 + 1]),
        (65_536, [0, 31, 200]),  # an array 32 header
    ],
)
def test_a_bundle_sent_as_parts_is_the_version_1_document_byte_for_byte(
    count: int, sizes: list[int]
) -> None:
    """The agent sends a bundle as its parts (no joined copy of its payloads): joined,
    they are msgpack's encoding of the version 1 document, whatever the blob count and
    payload sizes (so every server that reads version 1 reads them); a large payload is
    sent as views of its own bytes, and no part is much larger than ``PART_BYTES``."""
    rng = random.Random(count)
    blobs = [
        BundleBlob(
            rng.choice([0, 1, 127, 128, 255]),
            rng.randbytes(32),
            rng.choice([0, 1]),
            rng.randbytes(sizes[i % len(sizes)]),
            rng.choice([0, 127, 128, 65_536, 2**32 + 1]),
        )
        for i in range(count)
    ]
    size, parts = bundle_parts(blobs)
    body = b"".join(parts)
    assert body == packb({"v": BUNDLE_VERSION, "blobs": [list(b) for b in blobs]})
    assert size == len(body) and encode_bundle(blobs) == body
    assert max(len(p) for p in parts) <= PART_BYTES + 64
    big = {id(b.payload) for b in blobs if len(b.payload) >= PART_BYTES}
    views = [p for p in parts if isinstance(p, memoryview)]
    assert {id(v.obj) for v in views} == big  # not copied
    assert decode_bundle(body) == blobs


def test_too_many_blobs_is_too_large() -> None:
    rows = [[0, bytes(32), 0, b"", 0]] * 100_001
    with pytest.raises(TooLargeError):
        decode_bundle(packb({"v": BUNDLE_VERSION, "blobs": rows}))


@pytest.mark.parametrize(
    "row",
    [
        [True, bytes(32), 0, b"", 0],  # a bool is no kind
        [0, bytes(32), False, b"", 0],
        [0, bytes(32), 0, b"", True],
        [0, bytes(32), 0, "text", 0],
        [0, bytes(31), 0, b"", 0],
        [0, bytes(32), 0, b"", -1],
    ],
)
def test_malformed_rows_are_refused(row: list[Any]) -> None:
    with pytest.raises(IntegrityError):
        decode_bundle(packb({"v": BUNDLE_VERSION, "blobs": [row]}))


@pytest.mark.parametrize("v", [1.0, True, "1", None, 2])
def test_only_version_1_is_read(v: Any) -> None:
    with pytest.raises(IntegrityError, match="version"):
        decode_bundle(packb({"v": v, "blobs": []}))


@PARSER_SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_a_lamina_error(data: bytes) -> None:
    _decodes_or_refuses(data)


@PARSER_SETTINGS
@given(st.data())
def test_mutated_bundles_decode_or_raise_a_lamina_error(data: st.DataObject) -> None:
    _decodes_or_refuses(data.draw(mutations(encode_bundle(GOOD))))


@PARSER_SETTINGS
@given(msgpack_values(["v", "blobs"]))
def test_random_documents_decode_or_raise_a_lamina_error(doc: Any) -> None:
    _decodes_or_refuses(packb(doc))


# Deeply nested values: minutes on a loaded 2-core box, so it gets the heavy timeout and
# starts early (tests/conftest.py).
@pytest.mark.slow
@PARSER_SETTINGS
@given(st.lists(st.lists(msgpack_values(), min_size=4, max_size=6), max_size=4))
def test_random_rows_decode_or_raise_a_lamina_error(rows: list[Any]) -> None:
    _decodes_or_refuses(packb({"v": BUNDLE_VERSION, "blobs": rows}))
