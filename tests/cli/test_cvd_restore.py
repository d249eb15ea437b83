"""`lamina cvd restore --output`'s reads: blobs as stored, each hashed here against its id.

The server of a restore as download hands the admin's CLI the id key (protocol version
4); the CLI then refuses any answer that does not inflate to a blob hashing to the id it
asked for, and a key that is not 32 bytes, before writing a file from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgpack
import pytest

from lamina.cli.cvd import id_key_of, remote_blobs
from lamina.errors import IntegrityError
from lamina.store import blob
from lamina.store.repository import Store
from lamina.tree.restore import restore_tree
from tests.tree.treeutil import scan_tree


class _Server:
    """The ``Api.post`` of a server answering ``/blobs/read`` from ``store``: honest for
    trees, ``forge(raw length, flag, payload)`` for data blobs."""

    def __init__(self, store: Store, forge: Any) -> None:
        self.store = store
        self.forge = forge
        self.bodies: list[dict[str, Any]] = []

    def post(self, path: str, body: dict[str, Any]) -> bytes:
        assert path == "/blobs/read"
        self.bodies.append(body)
        ids = [bytes.fromhex(i) for i in body["ids"]]
        kinds = {row.id: row.kind for row in self.store.catalog.iter_blobs()}
        out = [
            list(s) if kinds[i] == blob.BlobKind.TREE else self.forge(*s)
            for i, s in zip(ids, self.store.unseal_many(ids), strict=False)
        ]
        return msgpack.packb(out, use_bin_type=True)


def test_the_cli_restore_refuses_a_hostile_answer_and_writes_nothing_from_it(
    store: Store, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"alpha " * 5000)
    (src / "b").write_bytes(b"beta " * 3000)
    root, _ = scan_tree(store, src)
    key = store.keys.chunking.id_key
    data = store.unseal_many(
        [r.id for r in store.catalog.iter_blobs() if r.kind == blob.BlobKind.DATA]
    )
    assert len(data) == 2

    def swapped(raw: int, flag: int, payload: bytes) -> list[Any]:
        """The other file's blob, honestly stored."""
        return list(data[1] if data[0][2] == payload else data[0])

    honest = _Server(store, lambda raw, flag, payload: [raw, flag, payload])
    restore_tree(remote_blobs(honest, key), root, tmp_path / "ok")  # type: ignore[arg-type]
    assert (tmp_path / "ok" / "a").read_bytes() == (src / "a").read_bytes()
    assert all(body["stored"] is True for body in honest.bodies)

    forgeries = [
        swapped,
        lambda raw, flag, payload: [raw - 1, flag, payload],  # a lying size
        lambda raw, flag, payload: [raw, 9, payload],  # an unknown flag
        lambda raw, flag, payload: blob.decompress(flag, payload, raw),  # plaintext
    ]
    for n, forge in enumerate(forgeries):
        out = tmp_path / f"out-{n}"
        with pytest.raises(IntegrityError):
            restore_tree(remote_blobs(_Server(store, forge), key), root, out)  # type: ignore[arg-type]
        assert os.listdir(out) == []  # no file, no temporary name


@pytest.mark.parametrize("text", ["zz" * 32, "ab" * 31, 7, ""])
def test_a_download_answer_with_a_malformed_id_key_is_refused(text: object) -> None:
    with pytest.raises(IntegrityError, match="id key"):
        id_key_of({"id": "x", "id_key": text})


def test_a_version_3_server_sends_no_id_key_and_the_cli_reads_plaintext() -> None:
    assert id_key_of({"id": "x"}) is None
