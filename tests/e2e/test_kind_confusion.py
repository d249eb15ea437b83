"""Finding 1 of the security review, end to end: blob-kind confusion must not lose data.

An enrolled device scans its own copy of a folder that other endpoints have byte for
byte (a package's files) and uploads that folder's tree object as a DATA blob,
before the others sync. At a188115 the victim was told the tree existed, uploaded
only its chunks, and the next `lamina store gc` deleted them (gc judged "is a
tree" by the index row); `lamina store check` said "no errors" and the restore
failed. Here the victim's restore after gc must give back every byte, and check
must find the store consistent.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Collection, Iterator
from pathlib import Path

import httpx
import msgpack
import pytest

from lamina.db.stores import StoreLocation, open_store
from lamina.protocol.bundle import MEDIA_TYPE
from lamina.store.blob import BlobKind, blob_id, compress
from lamina.store.keys import ChunkingSecret
from lamina.tree.model import decode_tree
from lamina.tree.scan import Scanner
from tests.e2e.conftest import Deployment, Lamina, _deployment

MTIME = 1_650_000_000_000_000_000


class TreeCapture:
    """A scan sink that keeps tree objects and claims every chunk is already stored:
    all the attacker needs is the folder's tree bytes."""

    def __init__(self, chunking: ChunkingSecret) -> None:
        self._chunking = chunking
        self.trees: dict[bytes, bytes] = {}

    @property
    def chunking(self) -> ChunkingSecret:
        return self._chunking

    def need(self, ids: Collection[bytes]) -> set[bytes]:
        return set()

    def put_chunk(self, kind: BlobKind, bid: bytes, data: bytes | memoryview) -> None:
        raise AssertionError("no chunk is needed")

    def put(self, kind: BlobKind, data: bytes) -> bytes:
        bid = blob_id(self._chunking.id_key, data)
        self.trees[bid] = data
        return bid


def add_package(root: Path) -> Path:
    """usr/share/libfoo: the same bytes, modes and times on every endpoint."""
    pkg = root / "usr/share/libfoo"
    pkg.mkdir(parents=True)
    rnd = random.Random(42)
    for i in range(3):
        f = pkg / f"part{i}.dat"
        f.write_bytes(rnd.randbytes(400_000 + i * 1000))
        os.chmod(f, 0o644)
        os.utime(f, ns=(MTIME + i, MTIME + i))
    os.chmod(pkg, 0o755)
    os.utime(pkg, ns=(MTIME, MTIME))
    return pkg


@pytest.fixture
def dep(tmp_path: Path) -> Iterator[Deployment]:
    yield from _deployment(tmp_path, [], 1)


def enroll(dep: Deployment, tmp: Path, name: str, root: Path, token: str) -> tuple[Lamina, Path]:
    agent = Lamina(tmp / "people" / name)
    state = tmp / f"{name}-state"
    agent.run(
        "agent", "enroll", "--server", dep.url, "--token", token,
        "--root", str(root), "--state", str(state),
    )  # fmt: skip
    return agent, state


def test_tree_uploaded_as_data_does_not_make_gc_delete_a_victims_chunks(
    dep: Deployment, tmp_path: Path
) -> None:
    admin = Lamina(tmp_path / "people" / "admin").login(dep.url)
    admin.run("policy", "create", "std", "--interval", "1h", "--keep-last", "10")
    token = admin.json("token", "create", "--expires", "1h", "--policy", "std", "--uses", "2")[
        "token"
    ]

    # The attacker: an active device with its own copy of the package.
    evil_root = tmp_path / "evil"
    (evil_root / "etc").mkdir(parents=True)
    (evil_root / "etc/hostname").write_text("evil\n")
    evil_pkg = add_package(evil_root)
    _, evil_state = enroll(dep, tmp_path, "evil", evil_root, token)
    st = json.loads((evil_state / "agent.json").read_text())
    chunking = ChunkingSecret(
        st["chunker_seed"], bytes.fromhex(st["id_key"]), st["min_size"], st["avg_size"],
        st["max_size"],
    )  # fmt: skip
    capture = TreeCapture(chunking)
    tid = Scanner(capture, workers=1).scan(evil_pkg)
    tree_bytes = capture.trees[tid]
    flag, payload = compress(tree_bytes)
    body = msgpack.packb(
        {"v": 1, "blobs": [[int(BlobKind.DATA), tid, flag, payload, len(tree_bytes)]]},
        use_bin_type=True,
    )
    r = httpx.post(
        dep.url + "/api/v1/agent/bundles",
        content=body,
        headers={"Authorization": f"Bearer {st['credential']}", "Content-Type": MEDIA_TYPE},
        timeout=60,
    )
    assert r.status_code == 200 and r.json() == {"new": 1}, r.text

    # The victim syncs: its package folder has the very same tree.
    # (Little else on it: a pack holding the package's chunks is mostly those chunks,
    # so a gc that thinks them dead deletes or repacks it, whatever the chunk order.)
    victim_root = tmp_path / "victim"
    (victim_root / "etc").mkdir(parents=True)
    (victim_root / "etc/hostname").write_text("victim\n")
    (victim_root / "home/alice").mkdir(parents=True)
    (victim_root / "home/alice/notes.txt").write_text("alice's notes\n")
    victim_pkg = add_package(victim_root)
    victim, victim_state = enroll(dep, tmp_path, "victim", victim_root, token)
    out = victim.json("agent", "run", "--once", "--state", str(victim_state))
    assert out["synced"] and out["cvd_id"], out
    store = open_store(StoreLocation(data=dep.servers[0].data))
    try:
        (snap,) = store.catalog.snapshots()
        node = snap.root
        for name in (b"usr", b"share", b"libfoo"):
            (e,) = [e for e in decode_tree(store.get(node)) if e.name == name]
            assert e.subtree is not None
            node = e.subtree
    finally:
        store.close()
    assert node == tid  # the victim's snapshot names the very tree the attacker uploaded

    admin.run("store", "gc", *dep.store_args)
    chk = admin.run("store", "check", "--read-data", *dep.store_args, ok=False)
    assert chk.returncode == 0 and "no errors" in chk.stdout, chk.stdout + chk.stderr

    restored = tmp_path / "restored"
    admin.run("cvd", "restore", out["cvd_id"], "--output", str(restored))
    for f in sorted(victim_pkg.iterdir()):
        back = restored / "usr/share/libfoo" / f.name
        assert back.read_bytes() == f.read_bytes(), f.name
    assert (restored / "home/alice/notes.txt").read_text() == "alice's notes\n"
