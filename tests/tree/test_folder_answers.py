"""The folders answer's bytes (``POST /blobs/trees``): what the server encodes, the agent
unpacks and restores, exactly, and nothing else."""

from __future__ import annotations

import msgpack
import pytest
import zstandard

from lamina.errors import IntegrityError
from lamina.store import blob
from lamina.tree.folder_answers import ID_HEADER, encode, restore, unpack

KEY = bytes(range(32))


def _bid(plain: bytes) -> bytes:
    return blob.blob_id(KEY, plain)


def _answer_of(plains: list[bytes], asked: int = 1) -> tuple[list[bytes], bytes]:
    ids = [_bid(p) for p in plains]
    return ids, encode(asked, ids, plains)


def test_folders_come_back_exactly_with_every_later_id_left_out_once() -> None:
    leaf_a, leaf_b = b"leaf a" * 7, b"leaf b" * 9
    a, b = _bid(leaf_a), _bid(leaf_b)
    # b's id twice (a sub-folder and, say, a name's bytes), a's once; an id's header
    # overlapping another's first bytes; an earlier tree's id is never a link.
    parent = b"p" + ID_HEADER + a + ID_HEADER + b + b"name:" + ID_HEADER + b + ID_HEADER[:1]
    ids, raw = _answer_of([parent, leaf_a, leaf_b])
    answer = unpack(raw)
    assert answer.asked == 1
    assert sorted(answer.links) == sorted(
        [(0, 1 + 2, 1), (0, 1 + 34 + 2, 2), (0, 1 + 68 + 5 + 2, 2)]
    )
    assert a not in answer.trees[0] and b not in answer.trees[0]  # the device computes them
    assert restore(answer, KEY) == list(zip(ids, [parent, leaf_a, leaf_b], strict=True))


def test_a_folder_of_thousands_of_sub_folders_comes_back_exactly() -> None:
    leaves = [b"leaf %d" % i for i in range(4000)]
    parent = b"".join(ID_HEADER + _bid(leaf) for leaf in leaves)
    ids, raw = _answer_of([parent, *leaves])
    answer = unpack(raw)
    assert len(answer.links) == 4000
    assert answer.trees[0] == ID_HEADER.join([b""] + [bytes(32)] * 4000)
    assert [bid for bid, _ in restore(answer, KEY)] == ids


def _raw(doc: object) -> bytes:
    body = msgpack.packb(doc, use_bin_type=True)
    return zstandard.ZstdCompressor(write_content_size=True).compress(body)


@pytest.mark.parametrize(
    "doc",
    [
        {"v": 2, "asked": 1, "trees": [b"x"], "links": []},  # another version
        {"v": 1, "asked": 0, "trees": [b"x"], "links": []},  # nothing asked answered
        {"v": 1, "asked": 2, "trees": [b"x"], "links": []},  # more asked than sent
        {"v": 1, "asked": 1, "trees": [b"x" * 40, b"y"], "links": [[1, 0, 0]]},  # backwards
        {"v": 1, "asked": 1, "trees": [b"x" * 40, b"y"], "links": [[0, 9, 1]]},  # past the end
        {"v": 1, "asked": 1, "trees": ["text"], "links": []},  # not bytes
    ],
)
def test_an_answer_out_of_form_is_refused(doc: object) -> None:
    with pytest.raises(IntegrityError):
        unpack(_raw(doc))


def test_an_answer_stating_more_than_the_limit_is_refused_before_it_is_inflated() -> None:
    huge = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(40 * 1024 * 1024))
    with pytest.raises(IntegrityError, match="states"):
        unpack(huge)
