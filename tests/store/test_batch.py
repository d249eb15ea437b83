"""store/batch.py: trees asked about once per batch, stored in the order they were put."""

from __future__ import annotations

from collections.abc import Collection

from lamina.store.batch import TreeBatcher


class _Sink:
    def __init__(self, have: set[bytes]) -> None:
        self.have = have
        self.questions: list[list[bytes]] = []
        self.stored: list[bytes] = []

    def need(self, ids: Collection[bytes]) -> set[bytes]:
        self.questions.append(list(ids))
        return {i for i in ids if i not in self.have}

    def store(self, bid: bytes, data: bytes) -> None:
        assert data == b"tree " + bid
        self.stored.append(bid)


def _ids(n: int) -> list[bytes]:
    return [bytes([i]) * 32 for i in range(n)]


def test_one_question_per_batch_and_only_lacking_trees_stored_in_order() -> None:
    ids = _ids(10)
    sink = _Sink(have=set(ids[::3]))
    b = TreeBatcher(sink.need, sink.store, max_count=4)
    for i in ids:
        b.add(i, b"tree " + i)
    assert len(sink.questions) == 2 and len(b) == 2  # two full batches, two trees queued
    b.settle()
    assert [len(q) for q in sink.questions] == [4, 4, 2]
    assert sink.stored == [i for i in ids if i not in sink.have]  # the order they were put


def test_a_batch_also_ends_at_its_byte_bound_and_duplicates_are_asked_once() -> None:
    ids = _ids(3)
    sink = _Sink(have=set())
    b = TreeBatcher(sink.need, sink.store, max_bytes=80)
    b.add(ids[0], b"tree " + ids[0])
    b.add(ids[0], b"tree " + ids[0])
    assert sink.questions == []
    b.add(ids[1], b"tree " + ids[1])  # 2 x 37 bytes: not yet
    b.add(ids[2], b"tree " + ids[2])  # past 80 bytes: settled
    assert sink.questions == [ids] and sink.stored == ids
    b.settle()
    assert len(sink.questions) == 1  # nothing queued: no question


def test_the_writer_stores_a_tree_no_later_than_its_flush(store) -> None:  # type: ignore[no-untyped-def]
    from lamina.store.blob import BlobKind
    from lamina.tree.model import encode_tree

    with store.writer() as w:
        tid = w.put(BlobKind.TREE, encode_tree([]))
        assert store.catalog.missing([tid]) == {tid}  # batched, not yet asked about
        w.flush()
        assert store.catalog.missing([tid]) == set()
