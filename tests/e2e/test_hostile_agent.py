"""Hostile input from an agent gets a clear error and changes nothing.

A real agent enrolls and syncs once; then its credential is used for raw
requests to /agent/bundles, /agent/commit and /agent/missing that a correct
agent never sends. Each must be refused with a 4xx and a JSON {code, message},
and the store (`lamina store stats`, the pack files on disk) and the CVD's
snapshots must be exactly as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import zstandard

from lamina.db.stores import StoreLocation, open_store
from lamina.protocol.bundle import MEDIA_TYPE
from lamina.store.blob import FLAG_RAW, FLAG_ZSTD, BlobKind, blob_id, compress
from lamina.store.repository import Store
from tests.e2e.conftest import ADMIN_PASSWORD, LAMINA, Deployment, Lamina, _deployment

API = "/api/v1"
#: The module's server refuses bodies above this (LAMINA_MAX_BODY); the default is 64 MiB.
MAX_BODY = 12 * 1024 * 1024
MiB = 1024 * 1024


@dataclass
class World:
    dep: Deployment
    admin: Lamina
    cvd: str
    credential: str
    id_key: bytes
    max_chunk: int
    client: httpx.Client
    admin_api: httpx.Client
    store: Store

    @property
    def data(self) -> Path:
        return self.dep.servers[0].data

    @property
    def pid(self) -> int:
        proc = self.dep.servers[0].proc
        assert proc is not None
        return proc.pid


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("hostile")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAMINA_MAX_BODY", str(MAX_BODY))  # read by the server process at start
        gen = _deployment(tmp, [], 1)
        dep = next(gen)
    admin = Lamina(tmp / "people" / "admin").login(dep.url)
    admin.run("policy", "create", "std", "--interval", "1h", "--keep-last", "50")
    token = admin.json("token", "create", "--expires", "1h", "--policy", "std")["token"]
    root = tmp / "endpoint"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("desk-hostile\n")
    (root / "home/eve").mkdir(parents=True)
    (root / "home/eve/notes.txt").write_text("ordinary data\n" * 100)
    agent = Lamina(tmp / "people" / "agent")
    state = tmp / "agent-state"
    agent.run(
        "agent",
        "enroll",
        "--server",
        dep.url,
        "--token",
        token,
        "--root",
        str(root),
        "--state",
        str(state),
    )
    out = agent.json("agent", "run", "--once", "--state", str(state))
    assert out["synced"] and out["cvd_id"], out
    st = json.loads((state / "agent.json").read_text())
    client = httpx.Client(
        base_url=dep.url + API, headers={"Authorization": f"Bearer {st['credential']}"}, timeout=60
    )
    login = httpx.post(
        dep.url + API + "/auth/login", json={"user": "admin", "password": ADMIN_PASSWORD}
    )
    admin_api = httpx.Client(
        base_url=dep.url + API,
        headers={"Authorization": f"Bearer {login.json()['token']}"},
        timeout=60,
    )
    store = open_store(
        StoreLocation(data=dep.servers[0].data, db_url=None, store_url=None, keyfile=None)
    )
    try:
        yield World(
            dep,
            admin,
            out["cvd_id"],
            st["credential"],
            bytes.fromhex(st["id_key"]),
            st["max_size"],
            client,
            admin_api,
            store,
        )
    finally:
        store.close()
        client.close()
        admin_api.close()
        with contextlib.suppress(StopIteration):
            next(gen)


# --- what "nothing changed" means -------------------------------------------------------------


def cli_stats(w: World) -> dict[str, Any]:
    """`lamina store stats --json` on the server's data folder (SQLite in WAL mode: read while it runs)."""
    p = subprocess.run(
        [*LAMINA, "store", "stats", "--data", str(w.data), "--json"],
        capture_output=True,
        text=True,
        env=w.admin.env,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout))


def store_state(w: World) -> dict[str, Any]:
    """The store's counts (what `lamina store stats` prints, read in-process: a CLI start
    per check would cost most of this module's time) and every file under the store folder."""
    st = dataclasses.asdict(w.store.stats())
    files = sorted(
        (str(f.relative_to(w.data / "store")), f.stat().st_size)
        for f in (w.data / "store").rglob("*")
        if f.is_file()
    )
    return {
        k: st[k] for k in ("blobs", "data_blobs", "tree_blobs", "packs", "pack_bytes", "snapshots")
    } | {"files": files}


def snapshots(w: World) -> list[str]:
    """The CVD's snapshots as an admin sees them (`lamina cvd snapshots` asks the same route)."""
    r = w.admin_api.get(f"/cvds/{w.cvd}/snapshots")
    assert r.status_code == 200, r.text
    return [s["id"] for s in r.json()]


@pytest.fixture
def unchanged(world: World) -> Iterator[None]:
    """The test's requests must leave the store and the CVD's snapshots as they were."""
    before, snaps = store_state(world), snapshots(world)
    yield
    assert store_state(world) == before
    assert snapshots(world) == snaps


# --- building bundles and trees -------------------------------------------------------------


def bundle(rows: list[Any], version: Any = 1) -> bytes:
    return msgpack.packb({"v": version, "blobs": rows}, use_bin_type=True)


def row(w: World, data: bytes, kind: int = BlobKind.DATA) -> list[Any]:
    """A well-formed bundle entry for ``data``, as a correct agent builds it."""
    flag, payload = compress(data)
    return [int(kind), blob_id(w.id_key, data), flag, payload, len(data)]


def file_entry(name: bytes, content: list[bytes], size: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "type": "file",
        "mode": 0o644,
        "uid": 1000,
        "gid": 1000,
        "user": "eve",
        "group": "eve",
        "mtime": 1_700_000_000_000_000_000,
        "size": size,
        "content": content,
    }


def dir_entry(name: bytes, subtree: bytes) -> dict[str, Any]:
    return {
        "name": name,
        "type": "dir",
        "mode": 0o755,
        "uid": 0,
        "gid": 0,
        "user": "root",
        "group": "root",
        "mtime": 1_700_000_000_000_000_000,
        "size": 0,
        "subtree": subtree,
    }


def tree(entries: list[dict[str, Any]]) -> bytes:
    """A tree object in the format of lamina.tree.model (entries sorted by name)."""
    return msgpack.packb(
        {"v": 1, "entries": sorted(entries, key=lambda e: e["name"])}, use_bin_type=True
    )


def post_bundle(w: World, body: bytes) -> httpx.Response:
    return w.client.post("/agent/bundles", content=body, headers={"Content-Type": MEDIA_TYPE})


def missing(w: World, ids: list[bytes]) -> list[str]:
    r = w.client.post("/agent/missing", json={"ids": [i.hex() for i in ids]})
    assert r.status_code == 200, r.text
    return list(r.json()["missing"])


def expect_error(r: httpx.Response, status: int, code: str, *words: str) -> dict[str, Any]:
    assert r.status_code == status, (
        f"{r.request.method} {r.request.url.path} -> {r.status_code} {r.text[:400]}"
    )
    assert r.headers["content-type"].startswith("application/json"), r.headers
    doc = r.json()
    assert doc["code"] == code, doc
    assert isinstance(doc["message"], str) and doc["message"].strip(), doc
    for word in words:
        assert word.lower() in doc["message"].lower(), (word, doc)
    return dict(doc)


# --- a valid upload is accepted (so every refusal below is about the input) -----------------


def test_valid_bundle_and_commit_are_accepted(world: World) -> None:
    before, snaps = store_state(world), snapshots(world)
    chunk = secrets.token_bytes(5000)
    t = tree([file_entry(b"fresh.bin", [blob_id(world.id_key, chunk)], len(chunk))])
    r = post_bundle(world, bundle([row(world, chunk), row(world, t, BlobKind.TREE)]))
    assert r.status_code == 200 and r.json() == {"new": 2}, r.text
    assert store_state(world)["blobs"] == before["blobs"] + 2
    c = world.client.post(
        "/agent/commit", json={"root": blob_id(world.id_key, t).hex(), "files": 1, "bytes": 5000}
    )
    assert c.status_code == 200, c.text
    assert snapshots(world) == [*snaps, c.json()["snapshot"]["id"]]


# --- bundles ---------------------------------------------------------------------------------

HOSTILE_BUNDLES: dict[str, tuple[Callable[[World], bytes], int, str, tuple[str, ...]]] = {
    "not-msgpack": (
        lambda w: b"this is not msgpack, it is prose\xc1\xc1",
        422,
        "integrity",
        ("msgpack",),
    ),
    "empty-body": (lambda w: b"", 422, "integrity", ("msgpack",)),
    "not-a-map": (
        lambda w: msgpack.packb([1, [row(w, b"x" * 100)]]),
        422,
        "integrity",
        ("version",),
    ),
    "wrong-version": (
        lambda w: bundle([row(w, b"v2 data" * 50)], version=2),
        422,
        "integrity",
        ("version",),
    ),
    "version-as-string": (
        lambda w: bundle([row(w, b"v1 data" * 50)], version="1"),
        422,
        "integrity",
        ("version",),
    ),
    "no-blob-list": (
        lambda w: msgpack.packb({"v": 1, "blobs": {"a": 1}}),
        422,
        "integrity",
        ("blob list",),
    ),
    "entry-not-a-list": (lambda w: bundle([{"kind": 0}]), 422, "integrity", ("malformed",)),
    "entry-four-fields": (
        lambda w: bundle([row(w, b"four" * 50)[:4]]),
        422,
        "integrity",
        ("malformed",),
    ),
    "entry-short-id": (
        lambda w: bundle([[0, b"\1" * 31, 0, b"abc", 3]]),
        422,
        "integrity",
        ("malformed",),
    ),
    "entry-negative-length": (
        lambda w: bundle([[0, b"\1" * 32, 0, b"abc", -3]]),
        422,
        "integrity",
        ("malformed",),
    ),
    "entry-str-payload": (
        lambda w: bundle([[0, b"\1" * 32, 0, "abc", 3]]),
        422,
        "integrity",
        ("malformed",),
    ),
    "unknown-flag": (
        lambda w: bundle([[0, blob_id(w.id_key, b"abc"), 7, b"abc", 3]]),
        422,
        "integrity",
        ("compression flag",),
    ),
    "raw-length-lies": (
        lambda w: bundle([[0, blob_id(w.id_key, b"abc"), FLAG_RAW, b"abc", 4]]),
        422,
        "integrity",
        ("bytes",),
    ),
    "wrong-hash": (
        lambda w: bundle(
            [[0, blob_id(w.id_key, b"what the id says"), FLAG_RAW, b"other bytes", 11]]
        ),
        422,
        "integrity",
        ("does not match its id",),
    ),
    "hash-with-another-key": (
        lambda w: bundle([[0, blob_id(b"k" * 32, b"keyed"), FLAG_RAW, b"keyed", 5]]),
        422,
        "integrity",
        ("does not match its id",),
    ),
    "unknown-kind": (
        lambda w: bundle([row(w, b"kind 9" * 40, kind=9)]),
        422,
        "integrity",
        ("unknown kind",),
    ),
    "snapshot-kind": (
        lambda w: bundle([row(w, msgpack.packb({"root": b"\0" * 32}), kind=BlobKind.SNAPSHOT)]),
        422,
        "integrity",
        ("snapshot", "commit"),
    ),
    "too-many-map-keys": (
        lambda w: msgpack.packb({"v": 1, "blobs": [], "a": 1, "b": 2, "c": 3}),
        413,
        "too_large",
        ("bundle",),
    ),
    # Trees are decoded by the server before they are stored.
    "tree-not-a-tree": (
        lambda w: bundle([row(w, b"\x93\x01\x02\x03" * 10, kind=BlobKind.TREE)]),
        422,
        "integrity",
        ("tree",),
    ),
    "tree-dotdot": (
        lambda w: bundle([row(w, tree([file_entry(b"..", [])]), kind=BlobKind.TREE)]),
        400,
        "unsafe_path",
        ("..",),
    ),
    "tree-dotdot-dir": (
        lambda w: bundle([row(w, tree([dir_entry(b"..", b"\2" * 32)]), kind=BlobKind.TREE)]),
        400,
        "unsafe_path",
        ("..",),
    ),
    "tree-slash": (
        lambda w: bundle([row(w, tree([file_entry(b"a/b", [])]), kind=BlobKind.TREE)]),
        400,
        "unsafe_path",
        ("a/b",),
    ),
    "tree-absolute": (
        lambda w: bundle([row(w, tree([file_entry(b"/etc", [])]), kind=BlobKind.TREE)]),
        400,
        "unsafe_path",
        (),
    ),
    "tree-nul": (
        lambda w: bundle([row(w, tree([file_entry(b"a\0b", [])]), kind=BlobKind.TREE)]),
        400,
        "unsafe_path",
        (),
    ),
    "tree-empty-name": (
        lambda w: bundle([row(w, tree([file_entry(b"", [])]), kind=BlobKind.TREE)]),
        400,
        "unsafe_path",
        (),
    ),
    "tree-dot": (
        lambda w: bundle([row(w, tree([file_entry(b".", [])]), kind=BlobKind.TREE)]),
        400,
        "unsafe_path",
        (),
    ),
    "tree-duplicate-names": (
        lambda w: bundle(
            [
                row(
                    w,
                    msgpack.packb(
                        {"v": 1, "entries": [file_entry(b"x", []), file_entry(b"x", [])]},
                        use_bin_type=True,
                    ),
                    kind=BlobKind.TREE,
                )
            ]
        ),
        422,
        "integrity",
        ("sorted or not unique",),
    ),
    "tree-bad-chunk-id": (
        lambda w: bundle([row(w, tree([file_entry(b"f", [b"short"])]), kind=BlobKind.TREE)]),
        422,
        "integrity",
        ("chunk id",),
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_BUNDLES))
def test_hostile_bundle_is_refused(world: World, unchanged: None, case: str) -> None:
    build, status, code, words = HOSTILE_BUNDLES[case]
    expect_error(post_bundle(world, build(world)), status, code, *words)


def test_hostile_bundles_leave_store_stats_unchanged(world: World) -> None:
    """All of the above in a row, checked with the command an operator runs."""
    before, snaps = cli_stats(world), world.admin.json("cvd", "snapshots", world.cvd)
    for case, (build, status, _, _) in HOSTILE_BUNDLES.items():
        r = post_bundle(world, build(world))
        assert r.status_code == status and r.json()["message"], (case, r.text)
    after = cli_stats(world)
    assert {k: after[k] for k in ("blobs", "packs", "pack_bytes", "snapshots")} == {
        k: before[k] for k in ("blobs", "packs", "pack_bytes", "snapshots")
    }
    assert world.admin.json("cvd", "snapshots", world.cvd) == snaps


def test_one_bad_blob_refuses_the_whole_bundle(world: World, unchanged: None) -> None:
    good = secrets.token_bytes(3000)
    good_tree = tree([file_entry(b"ok.txt", [blob_id(world.id_key, good)], 3000)])
    for bad in (
        [0, blob_id(world.id_key, b"claimed"), FLAG_RAW, b"delivered", 9],
        row(world, tree([file_entry(b"..", [])]), kind=BlobKind.TREE),
    ):
        body = bundle([row(world, good), row(world, good_tree, BlobKind.TREE), bad])
        r = post_bundle(world, body)
        assert 400 <= r.status_code < 500 and r.json()["code"] in ("integrity", "unsafe_path"), (
            r.text
        )
    ids = [blob_id(world.id_key, good), blob_id(world.id_key, good_tree)]
    assert sorted(missing(world, ids)) == sorted(i.hex() for i in ids)


def test_chunk_above_the_chunk_maximum_is_refused(world: World, unchanged: None) -> None:
    # Correctly named and hashed, but no chunker makes a chunk this large.
    data = secrets.token_bytes(world.max_chunk + 1)
    r = post_bundle(world, bundle([[0, blob_id(world.id_key, data), FLAG_RAW, data, len(data)]]))
    expect_error(r, 422, "integrity", str(world.max_chunk), "limit")
    # A tiny payload that only claims to be large is refused before anything is inflated.
    r = post_bundle(world, bundle([[0, b"\7" * 32, FLAG_ZSTD, b"\0" * 16, 2**40]]))
    expect_error(r, 422, "integrity", "limit")


def _peak_rss(pid: int, reset: bool = False) -> int:
    """The process's peak resident memory (VmHWM); ``reset`` lowers it to the current RSS first."""
    if reset:
        # Without it the peak so far is the baseline: a bomb still has to raise it.
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def zstd_bomb(size: int, *, content_size: bool) -> bytes:
    """A zstd frame of ``size`` zero bytes, built without holding them all."""
    cctx = zstandard.ZstdCompressor(level=3, write_content_size=content_size)
    obj = cctx.compressobj(size=size if content_size else -1)
    zeros = bytes(MiB)
    out = [obj.compress(zeros) for _ in range(size // MiB)]
    out.append(obj.flush())
    return b"".join(out)


@pytest.mark.parametrize("content_size", [False, True], ids=["no-size-in-frame", "size-in-frame"])
def test_zstd_bomb_with_a_lying_raw_length(
    world: World, unchanged: None, content_size: bool
) -> None:
    bomb = 256 * MiB
    payload = zstd_bomb(bomb, content_size=content_size)
    assert len(payload) < 64 * 1024
    peak = _peak_rss(world.pid, reset=True)
    for kind, declared in (
        (BlobKind.DATA, 4096),
        (BlobKind.TREE, 4096),
        (BlobKind.DATA, world.max_chunk),
    ):
        r = post_bundle(world, bundle([[int(kind), b"\3" * 32, FLAG_ZSTD, payload, declared]]))
        expect_error(r, 422, "integrity")
    # The server never inflated the frame beyond what the entry declared (at most one chunk).
    grew = _peak_rss(world.pid) - peak
    assert grew < 64 * MiB, (
        f"server peak memory grew by {grew // MiB} MiB for a {len(payload)}-byte bomb"
    )


# --- body size -------------------------------------------------------------------------------


def _raw_request(w: World, head: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """Send a request by hand; return the status and JSON body of the answer."""
    host, port = "127.0.0.1", w.dep.servers[0].port
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            part = s.recv(65536)
            if not part:
                break
            data += part
        header, _, rest = data.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in header.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            part = s.recv(65536)
            if not part:
                break
            rest += part
    return status, json.loads(rest[:length])


def test_declared_oversized_body_is_refused_before_it_is_sent(
    world: World, unchanged: None
) -> None:
    for declared in (MAX_BODY + 1, 64 * MiB + 1, 2**40):
        head = (
            f"POST {API}/agent/bundles HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {world.credential}\r\nContent-Type: {MEDIA_TYPE}\r\n"
            f"Content-Length: {declared}\r\nConnection: close\r\n\r\n"
        )
        # One byte of the promised body: a server that waited for the rest would never
        # answer (the request's socket gives up after 30 s and the test fails).
        status, doc = _raw_request(world, head, b"\x81")
        assert status == 413 and doc["code"] == "too_large" and str(declared) in doc["message"], doc


def test_streamed_oversized_body_is_refused(world: World, unchanged: None) -> None:
    # Chunked transfer: no Content-Length to check, the server counts what arrives.
    def body() -> Iterator[bytes]:
        piece = bytes(MiB)
        for _ in range(MAX_BODY // MiB):
            yield piece
        yield b"\0"

    r = world.client.post("/agent/bundles", content=body(), headers={"Content-Type": MEDIA_TYPE})
    assert "content-length" not in r.request.headers
    expect_error(r, 413, "too_large", str(MAX_BODY))


def test_body_just_under_the_limit_is_read(world: World, unchanged: None) -> None:
    """The limit is the configured one (LAMINA_MAX_BODY), not something smaller."""
    r = post_bundle(world, b"\xc1" * (MAX_BODY - 1024))
    expect_error(r, 422, "integrity", "msgpack")


# --- commits ---------------------------------------------------------------------------------


def cli_snapshots(w: World) -> list[str]:
    return [s["id"] for s in w.admin.json("cvd", "snapshots", w.cvd)]


def test_commit_of_a_root_that_is_not_stored(world: World, unchanged: None) -> None:
    snaps = cli_snapshots(world)
    assert snaps
    root = blob_id(world.id_key, tree([file_entry(b"never-uploaded", [])]))
    r = world.client.post("/agent/commit", json={"root": root.hex(), "files": 1, "bytes": 0})
    expect_error(r, 422, "missing_data", "root")
    assert cli_snapshots(world) == snaps


def test_commit_of_a_data_blob_as_root(world: World) -> None:
    data = b"just data, not a tree\n" * 20
    r = post_bundle(world, bundle([row(world, data)]))
    assert r.status_code == 200, r.text
    snaps = snapshots(world)
    r = world.client.post(
        "/agent/commit", json={"root": blob_id(world.id_key, data).hex(), "files": 0, "bytes": 0}
    )
    assert 400 <= r.status_code < 500 and r.json()["code"] in ("integrity", "missing_data"), r.text
    assert snapshots(world) == snaps


def test_commit_naming_a_chunk_never_uploaded(world: World) -> None:
    chunk = secrets.token_bytes(7000)
    cid = blob_id(world.id_key, chunk)
    t = tree([file_entry(b"report.pdf", [cid], len(chunk))])
    tid = blob_id(world.id_key, t)
    r = post_bundle(
        world, bundle([row(world, t, BlobKind.TREE)])
    )  # the tree alone: valid on its own
    assert r.status_code == 200 and r.json() == {"new": 1}, r.text
    assert missing(world, [tid, cid]) == [cid.hex()]
    snaps, before = snapshots(world), store_state(world)

    r = world.client.post(
        "/agent/commit", json={"root": tid.hex(), "files": 1, "bytes": len(chunk)}
    )
    expect_error(r, 422, "missing_data", "chunks", "upload")
    assert cli_snapshots(world) == snaps and store_state(world) == before

    # Once the chunk is there, the very same commit goes through.
    assert post_bundle(world, bundle([row(world, chunk)])).json() == {"new": 1}
    r = world.client.post(
        "/agent/commit", json={"root": tid.hex(), "files": 1, "bytes": len(chunk)}
    )
    assert r.status_code == 200, r.text
    assert snapshots(world) == [*snaps, r.json()["snapshot"]["id"]]


def test_commit_naming_a_subtree_never_uploaded(world: World) -> None:
    sub = tree([file_entry(b"deep.txt", [])])
    top = tree([dir_entry(b"home", blob_id(world.id_key, sub))])
    r = post_bundle(world, bundle([row(world, top, BlobKind.TREE)]))
    assert r.status_code == 200, r.text
    snaps = snapshots(world)
    r = world.client.post(
        "/agent/commit", json={"root": blob_id(world.id_key, top).hex(), "files": 1, "bytes": 0}
    )
    expect_error(r, 422, "missing_data")
    assert snapshots(world) == snaps


@pytest.mark.parametrize(
    "root", ["zz" * 32, "AB" * 32, "00" * 31, "00" * 33, "", " " + "00" * 32, 7]
)
def test_commit_with_a_bad_root_is_400(world: World, unchanged: None, root: Any) -> None:
    r = world.client.post("/agent/commit", json={"root": root, "files": 0, "bytes": 0})
    expect_error(r, 400, "bad_request", "root")


@pytest.mark.parametrize(
    "body",
    [
        {"root": "00" * 32, "files": -1, "bytes": 0},
        {"root": "00" * 32, "files": 0, "bytes": 0, "cvd": "someone-else"},
        {"files": 0, "bytes": 0},
    ],
)
def test_commit_with_a_malformed_body_is_400(
    world: World, unchanged: None, body: dict[str, Any]
) -> None:
    expect_error(world.client.post("/agent/commit", json=body), 400, "bad_request")


# --- missing ---------------------------------------------------------------------------------


def test_missing_bounds_and_hex(world: World) -> None:
    ok = [secrets.token_hex(32) for _ in range(20000)]
    r = world.client.post("/agent/missing", json={"ids": ok})
    assert r.status_code == 200 and len(r.json()["missing"]) == 20000
    expect_error(
        world.client.post("/agent/missing", json={"ids": [*ok, secrets.token_hex(32)]}),
        400,
        "bad_request",
    )
    for bad in ("zz" * 32, "0" * 63, "0" * 65, "", "é" * 32, "0x" + "0" * 62):
        expect_error(
            world.client.post("/agent/missing", json={"ids": [ok[0], bad]}), 400, "bad_request"
        )
    expect_error(world.client.post("/agent/missing", json={"ids": "00" * 32}), 400, "bad_request")


def test_agent_routes_need_this_devices_credential(world: World, unchanged: None) -> None:
    body = bundle([row(world, b"anonymous data" * 10)])
    r = httpx.post(
        world.dep.url + API + "/agent/bundles", content=body, headers={"Content-Type": MEDIA_TYPE}
    )
    expect_error(r, 401, "unauthorized")
    r = httpx.post(
        world.dep.url + API + "/agent/bundles",
        content=body,
        headers={
            "Content-Type": MEDIA_TYPE,
            "Authorization": "Bearer lmd_" + secrets.token_urlsafe(32),
        },
    )
    expect_error(r, 401, "unauthorized")
