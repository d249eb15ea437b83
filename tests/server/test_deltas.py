"""File deltas end to end at the service level: a real server in this process
(``/blobs/delta``, its cache on disk) and the agent's staging and boot-apply on a
real folder, counting the bytes that come over the wire at the agent's transport.

The data is generated from fixed seeds (no randomness between runs)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import zstandard

from lamina.agent.deltas import Candidate, fetch_deltas
from lamina.agent.runner import Agent
from lamina.agent.staging.apply import boot
from lamina.agent.staging.stage import stage_layers, stage_revert
from lamina.agent.state import AgentState, save_state
from lamina.agent.transport import AgentClient
from lamina.config import ServerSettings
from lamina.errors import IntegrityError, NotFoundError
from lamina.protocol import PROTOCOL_VERSION, TREES_SINCE
from lamina.protocol.tasks import LayerApplyParams, RestoreParams, RevertParams
from lamina.server.services.deltas import (
    HEADER,
    DeltaCache,
    DeltaKey,
    cache_for,
    delta_for,
)
from lamina.store import blob
from lamina.store.blob import BlobKind, compress
from lamina.store.chunker import Chunker
from lamina.store.delta import make_delta
from lamina.store.keys import (
    ChunkingSecret,
    read_keyfile,
)
from lamina.store.repository import Store
from lamina.tree.model import Entry, encode_tree
from tests.server.conftest import ADMIN_PASSWORD, Device, Live, fixed_keys, free_port, serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One server for the module: each test enrolls its own device."""
    data = tmp_path_factory.mktemp("deltas") / "data"
    # The store's keys are fixed, not drawn: where its chunk boundaries fall decides the
    # framing a delta carries, which a test below bounds.
    fixed_keys(data)
    settings = ServerSettings(data=data, port=free_port(), admin_password=ADMIN_PASSWORD)
    for url in serve(settings):
        srv = Live(url, data)
        try:
            yield srv
        finally:
            for c in srv.clients:
                c.close()


def _lines(seed: int, size: int, word: str) -> bytes:
    """A text-like file (a symbol table, a config): what small edits usually touch."""
    rng = random.Random(seed)
    out = bytearray()
    i = 0
    while len(out) < size:
        out += f"{word}_{i:07d} = 0x{rng.getrandbits(32):08x} # {rng.choice(WORDS)}\n".encode()
        i += 1
    return bytes(out[:size])


WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
RNG = random.Random(2026)
#: The old versions the endpoint holds (a library, a text file, one that does not change).
LIB_V1 = RNG.randbytes(1024 * 1024)
TXT_V1 = _lines(1, 1024 * 1024, "symbol")
SAME = _lines(2, 100_000, "same")
#: The new versions: 16 KiB of the library rewritten with random bytes (incompressible),
#: 48 KiB of the text file replaced by other lines.
LIB_V2 = LIB_V1[:500_000] + RNG.randbytes(16_384) + LIB_V1[516_384:]
TXT_V2 = TXT_V1[:600_000] + _lines(3, 49_152, "patched") + TXT_V1[649_152:]
CHANGED = 16_384 + 49_152
RNG_FORGED = random.Random(7)


def _commit_tree(dev: Device, chunking: ChunkingSecret, files: dict[bytes, bytes]) -> bytes:
    """Upload a one-folder tree of files cut as the agent cuts them; returns its id."""
    chunker = Chunker(chunking)
    entries = []
    for name, data in files.items():
        ids = dev.upload([(BlobKind.DATA, bytes(v)) for v in chunker.cut(data)])
        entries.append(Entry(name=name, type="file", size=len(data), content=list(ids)))
    [root] = dev.upload([(BlobKind.TREE, encode_tree(entries))])
    r = dev.client.post("/agent/commit", json={"root": root.hex(), "files": 1, "bytes": 0})
    assert r.status_code == 200, r.text
    return root


def _ids(chunking: ChunkingSecret, data: bytes) -> list[bytes]:
    return [blob.blob_id(chunking.id_key, v) for v in Chunker(chunking).cut(data)]


def _run_key(chunking: ChunkingSecret, old: bytes, new: bytes) -> DeltaKey:
    """The cache key of the delta an agent asks for a file changed in one place: the old
    version's chunks, and the run of the new version's that the old one lacks."""
    before = _ids(chunking, old)
    return DeltaKey(tuple(before), tuple(i for i in _ids(chunking, new) if i not in before))


class Endpoint:
    """An enrolled device with a root folder holding version 1, and version 2 committed."""

    def __init__(
        self, live: Live, tmp_path: Path, v1: dict[bytes, bytes], v2: dict[bytes, bytes]
    ) -> None:
        self.chunking = read_keyfile(live.data / "keys.json").chunking
        self.dev = live.device(tmp_path.name)
        self.root = tmp_path / "root"
        self.root.mkdir()
        self.state_dir = self.root / "var/lib/lamina"
        self.state_dir.mkdir(parents=True)
        for name, data in v1.items():
            (self.root / name.decode()).write_bytes(data)
        _commit_tree(self.dev, self.chunking, v1)
        self.v2 = _commit_tree(self.dev, self.chunking, v2)
        credential = str(self.dev.client.headers["Authorization"]).removeprefix("Bearer ")
        c = self.chunking
        self.state = AgentState(
            server=live.url,
            device_id=tmp_path.name,
            credential=credential,
            root=str(self.root),
            chunker_seed=c.chunker_seed,
            id_key=c.id_key.hex(),
            min_size=c.min_size,
            avg_size=c.avg_size,
            max_size=c.max_size,
        )
        self.client = AgentClient(live.url, credential, None)

    def stage(self) -> dict[str, Any]:
        return stage_layers(
            self.client, self.state, self.state_dir, LayerApplyParams(delta=self.v2.hex())
        )

    def files(self) -> dict[str, bytes]:
        return {n: (self.root / n).read_bytes() for n in ("lib.so", "symbols.txt", "same.txt")}


V1 = {b"lib.so": LIB_V1, b"symbols.txt": TXT_V1, b"same.txt": SAME}
V2 = {b"lib.so": LIB_V2, b"symbols.txt": TXT_V2, b"same.txt": SAME}


def _named(files: dict[bytes, bytes]) -> dict[str, bytes]:
    return {n.decode(): d for n, d in files.items()}


def test_a_layer_update_of_small_edits_downloads_at_most_the_changed_bytes(
    server: Live, tmp_path: Path
) -> None:
    ep = Endpoint(server, tmp_path, V1, V2)
    got = ep.stage()
    assert got["delta_files"] == 2
    # Bytes on the wire at the agent's transport: the tree, the two deltas, nothing else.
    assert 16_384 < got["downloaded_bytes"] <= CHANGED
    boot(ep.state_dir, ep.root)
    assert ep.files() == _named(V2)
    # The deltas are cached in the server's data folder.
    cache = cache_for(server.data, 1 << 30)
    sent = 0
    for old, new in ((LIB_V1, LIB_V2), (TXT_V1, TXT_V2)):
        delta = cache.get(_run_key(ep.chunking, old, new))
        assert delta is not None
        sent += len(delta)
    # The tree once (staging reads it several times), the deltas, a few bytes of framing.
    [tree] = msgpack.unpackb(ep.dev.client.post("/blobs/read", json={"ids": [ep.v2.hex()]}).content)
    assert got["downloaded_bytes"] <= sent + len(tree) + 256


def test_without_an_old_version_the_file_comes_as_chunks(server: Live, tmp_path: Path) -> None:
    ep = Endpoint(server, tmp_path, {b"same.txt": SAME}, V2)
    got = ep.stage()
    assert got["delta_files"] == 0
    # Every chunk of both files came, as stored (compressed: the agent inflates them).
    chunks = [c for data in (LIB_V2, TXT_V2) for c in Chunker(ep.chunking).cut(data)]
    assert got["downloaded_bytes"] >= sum(len(compress(bytes(c))[1]) for c in chunks)
    boot(ep.state_dir, ep.root)
    assert ep.files() == _named(V2)


def test_a_revert_brings_the_old_versions_back_as_deltas(server: Live, tmp_path: Path) -> None:
    """A revert (and a migration's staging: the same ``stage_tree``) sends the snapshot's
    version of each swapped file as a delta against the endpoint's current one."""
    ep = Endpoint(server, tmp_path, V2, V1)  # the endpoint runs V2; its tree of V1
    params = RevertParams(snapshot="v1", root=ep.v2.hex(), system_only=False)
    received = ep.client.received_bytes
    got = stage_revert(ep.client, ep.state, ep.state_dir, params)
    assert got["delta_files"] == 2
    assert ep.client.received_bytes - received <= CHANGED
    boot(ep.state_dir, ep.root)
    assert ep.files() == _named(V1)


def test_a_restore_onto_the_endpoint_sends_changed_files_as_deltas(
    server: Live, tmp_path: Path
) -> None:
    ep = Endpoint(server, tmp_path, V1, V2)
    save_state(ep.state_dir, ep.state)
    agent = Agent(ep.state_dir)
    try:
        got = agent.restore(
            RestoreParams(
                snapshot="v2",
                root=ep.v2.hex(),
                paths=["lib.so", "symbols.txt", "same.txt"],
                overwrite=True,
            )
        )
    finally:
        agent.close()
    assert got["delta_files"] == 2 and not got["errors"]
    assert got["downloaded_bytes"] <= CHANGED
    assert ep.files() == _named(V2)


#: A large file (a library) and its new version: 16 KiB in its middle rewritten.
BIG_V1 = random.Random(11).randbytes(6 * 1024 * 1024)
BIG_V2 = BIG_V1[:3_000_000] + random.Random(12).randbytes(16_384) + BIG_V1[3_016_384:]


def test_a_delta_carries_only_the_chunks_that_changed(server: Live, tmp_path: Path) -> None:
    """The delta of a large file is asked for the run of its chunks the endpoint lacks,
    not the whole file: the chunks around the change are neither sent nor framed again."""
    ep = Endpoint(server, tmp_path, {b"big.so": BIG_V1}, {b"big.so": BIG_V2})
    asked: list[Any] = []
    ep.client.http.event_hooks["request"].append(
        lambda req: (
            asked.extend(json.loads(req.content)["items"])
            if req.url.path.endswith("/blobs/delta")
            else None
        )
    )
    answers = _answers(ep.client)
    got = ep.stage()
    assert got["delta_files"] == 1
    old, new = _ids(ep.chunking, BIG_V1), _ids(ep.chunking, BIG_V2)
    [item] = asked
    assert item["base"] == [i.hex() for i in old]
    assert item["target"] == [i.hex() for i in new if i not in old]
    assert 0 < len(item["target"]) < len(new)
    # The changed bytes, the tree and the delta's framing of the run around them (where
    # that run starts and ends is the store's chunking secret's, fixed here: FIXED_KEYS).
    assert 16_384 < sum(answers) <= 16_384 + 1024
    boot(ep.state_dir, ep.root)
    assert (ep.root / "big.so").read_bytes() == BIG_V2


def test_a_forged_delta_is_refused_and_nothing_is_staged(server: Live, tmp_path: Path) -> None:
    lib_v3 = LIB_V1[:-16_384] + RNG_FORGED.randbytes(16_384)
    ep = Endpoint(server, tmp_path, V1, {**V2, b"lib.so": lib_v3})
    # A server (or its disk) that answers with a well-formed delta of other content of
    # the same size: it decodes, but does not give the chunks the verified tree names.
    forged = make_delta(LIB_V1, LIB_V1[:-16_384] + bytes(16_384))
    cache_for(server.data, 1 << 30).put(_run_key(ep.chunking, LIB_V1, lib_v3), forged)
    with pytest.raises(IntegrityError, match=r"/lib\.so"):
        ep.stage()
    assert not any((ep.state_dir / ".lamina-staging").glob("*"))
    assert boot(ep.state_dir, ep.root) == []
    assert ep.files() == _named(V1)


def test_the_cache_survives_a_restart_and_a_damaged_entry_is_computed_again(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunking = store.keys.chunking
    base: list[bytes] = []
    target: list[bytes] = []
    with store.writer() as w:
        for data, out in ((TXT_V1, base), (TXT_V2, target)):
            for v in Chunker(chunking).cut(data):
                out.append(w.put(BlobKind.DATA, bytes(v)))
    first = delta_for(store, DeltaCache(tmp_path / "deltas", 1 << 30), base, target)
    assert first is not None and len(first) < 49_152
    [entry] = (tmp_path / "deltas").iterdir()

    # A new server process: the entry is read, not computed.
    def no_compute(old: bytes, new: bytes) -> bytes:
        raise AssertionError("computed again")

    monkeypatch.setattr("lamina.server.services.deltas.make_delta", no_compute)
    assert delta_for(store, DeltaCache(tmp_path / "deltas", 1 << 30), base, target) == first

    # A damaged entry (one flipped bit of the payload) is dropped and computed again.
    raw = bytearray(entry.read_bytes())
    raw[HEADER.size + 10] ^= 1
    entry.write_bytes(raw)
    cache = DeltaCache(tmp_path / "deltas", 1 << 30)
    assert cache.get(DeltaKey(tuple(base), tuple(target))) is None
    assert not entry.exists()
    monkeypatch.setattr("lamina.server.services.deltas.make_delta", make_delta)
    assert delta_for(store, cache, base, target) == first
    assert entry.read_bytes()[HEADER.size :] == first


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    cache = DeltaCache(tmp_path / "deltas", 10_000)
    for i in range(10):
        cache.put(DeltaKey((bytes([i]) * 32,), (b"\0" * 32,)), bytes([i]) * 3000)
    sizes = [p.stat().st_size for p in (tmp_path / "deltas").iterdir()]
    assert sum(sizes) <= 10_000 and len(sizes) == 3
    assert cache.get(DeltaKey((bytes([9]) * 32,), (b"\0" * 32,))) == bytes([9]) * 3000


def test_a_server_without_deltas_means_chunks() -> None:
    """Protocol version 1: a server without /blobs/delta answers 404."""
    client = AgentClient("http://127.0.0.1:1", "x", None)
    client.http = httpx.Client(
        base_url="http://127.0.0.1:1/api/v1",
        transport=httpx.MockTransport(lambda r: httpx.Response(404, json={"detail": "Not Found"})),
    )
    c = Candidate("a", Path("/nonexistent"), 1, [b"\1" * 32], [b"\2" * 32], 1)
    assert fetch_deltas(client, [(c, c.new_ids)]) == [None]


def test_a_device_gets_no_delta_of_or_against_another_endpoints_files(
    server: Live, tmp_path: Path
) -> None:
    """No content oracle (see services/access.py): a new version the device may not read
    is refused as /blobs/read refuses it; an old version it does not own gives no delta,
    the same answer as a delta not worth sending."""
    chunking = read_keyfile(server.data / "keys.json").chunking
    other = server.device(tmp_path.name + "-other")
    secret = TXT_V1[:600_000] + _lines(4, 49_152, "secret") + TXT_V1[649_152:]
    _commit_tree(other, chunking, {b"secret.txt": secret})
    ep = Endpoint(server, tmp_path, V1, V2)
    theirs = [i.hex() for i in _ids(chunking, secret)]
    mine_v1 = [i.hex() for i in _ids(chunking, TXT_V1)]
    r = ep.dev.client.post("/blobs/delta", json={"items": [{"base": mine_v1, "target": theirs}]})
    assert r.status_code == 403 and r.json()["code"] == "forbidden", r.status_code
    mine_v2 = [i.hex() for i in _ids(chunking, LIB_V2)]
    their_v1 = [i.hex() for i in _ids(chunking, LIB_V1[:-1])]
    _commit_tree(other, chunking, {b"lib.so": LIB_V1[:-1]})
    r = ep.dev.client.post("/blobs/delta", json={"items": [{"base": their_v1, "target": mine_v2}]})
    assert r.status_code == 200, r.text
    assert msgpack.unpackb(r.content) == {"v": 1, "deltas": [None]}
    # A user's token is not a device credential.
    r = server.login().post("/blobs/delta", json={"items": []})
    assert r.status_code == 401, r.text


def _nested_delivery(ep: Endpoint, folders: list[bytes] | None = None) -> dict[str, bytes]:
    """A delivery changing one file in each of 24 folders two levels down (as ep.v2);
    the ids of its 29 folders go to ``folders``."""
    chunker = Chunker(ep.chunking)
    files = {
        f"top{t}/sub{s}/conf": _lines(10 * t + s, 3_000, "key") for t in range(4) for s in range(6)
    }

    def folder(entries: list[Entry]) -> bytes:
        [tid] = ep.dev.upload([(BlobKind.TREE, encode_tree(entries))])
        if folders is not None:
            folders.append(tid)
        return tid

    tops = []
    for t in range(4):
        subs = []
        for s in range(6):
            data = files[f"top{t}/sub{s}/conf"]
            ids = ep.dev.upload([(BlobKind.DATA, bytes(v)) for v in chunker.cut(data)])
            leaf = folder([Entry(name=b"conf", type="file", size=len(data), content=list(ids))])
            subs.append(Entry(name=f"sub{s}".encode(), type="dir", subtree=leaf))
        tops.append(Entry(name=f"top{t}".encode(), type="dir", subtree=folder(subs)))
    ep.v2 = folder(tops)
    r = ep.dev.client.post("/agent/commit", json={"root": ep.v2.hex(), "files": 24, "bytes": 0})
    assert r.status_code == 200, r.text
    return files


def test_a_delivery_s_folders_are_asked_for_a_level_at_a_time(server: Live, tmp_path: Path) -> None:
    """A delivery changing one file in each of 24 folders two levels down reads the
    delta's trees a level at a time: a few ``/blobs/read`` requests, not one per folder."""
    ep = Endpoint(server, tmp_path, {b"same.txt": SAME}, {b"same.txt": SAME})
    files = _nested_delivery(ep)
    reads: list[str] = []
    ep.client.http.event_hooks["request"].append(
        lambda req: reads.append(req.url.path) if req.url.path.endswith("/blobs/read") else None
    )
    ep.stage()
    # The root, its 4 folders in one request, their 24 in one, the 24 files' chunks in
    # one: 4 (one request per folder would be 29 for the trees alone).
    assert len(reads) <= 5, reads
    boot(ep.state_dir, ep.root)
    for rel, data in files.items():
        assert (ep.root / rel).read_bytes() == data


def _answers(client: AgentClient) -> list[int]:
    """The sizes of the answers ``client`` got (not of errors it retried: a server under
    load may answer 503 first, and its message would count in ``received_bytes``)."""
    sizes: list[int] = []
    raw = client.raw

    def counting(method: str, path: str, **kw: Any) -> bytes:
        out = raw(method, path, **kw)
        sizes.append(len(out))
        return out

    client.raw = counting  # type: ignore[method-assign]
    return sizes


def _paths(client: AgentClient) -> list[str]:
    seen: list[str] = []
    client.http.event_hooks["request"].append(lambda req: seen.append(req.url.path))
    return seen


def test_a_delivery_s_folders_come_several_to_one_frame(server: Live, tmp_path: Path) -> None:
    """From a version-5 server a delivery's folders come a level at a time in one zstd
    frame each (``/blobs/trees``), in fewer bytes than read one by one as stored."""
    got: dict[int, int] = {}
    for protocol in (TREES_SINCE - 1, PROTOCOL_VERSION):
        folder = tmp_path / f"{tmp_path.name}-{protocol}"
        folder.mkdir()
        ep = Endpoint(server, folder, {b"same.txt": SAME}, {b"same.txt": SAME})
        files = _nested_delivery(ep)
        ep.client.server_protocol = protocol
        paths = _paths(ep.client)
        answers = _answers(ep.client)
        ep.stage()
        got[protocol] = sum(answers)
        trees = [p for p in paths if p.endswith("/blobs/trees")]
        # The root and the 28 folders below it in one request, only from a version-5 server.
        assert len(trees) == (1 if protocol >= TREES_SINCE else 0), paths
        boot(ep.state_dir, ep.root)
        for rel, data in files.items():
            assert (ep.root / rel).read_bytes() == data
    # The same delivery: the 24 files' chunks alike, the 29 folders in fewer bytes.
    # 24,884 -> 21,361 bytes measured.
    saved = got[TREES_SINCE - 1] - got[PROTOCOL_VERSION]
    assert saved > 2_400, got


def test_a_folder_that_is_not_the_one_asked_for_is_refused_and_nothing_is_staged(
    server: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ep = Endpoint(server, tmp_path, {b"same.txt": SAME}, {b"same.txt": SAME})
    _nested_delivery(ep)
    ep.client.server_protocol = PROTOCOL_VERSION
    raw = ep.client.raw
    other = encode_tree([Entry(name=b"conf", type="file", size=1, content=[bytes(32)])])

    def forging(method: str, path: str, **kw: Any) -> bytes:
        out = raw(method, path, **kw)
        if path != "/blobs/trees":
            return out
        # A server (or a proxy) that swaps one of the deepest folders for another,
        # well-formed one: it must not be taken for the folder asked for.
        doc = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(out))
        assert len(doc["trees"]) == 29
        doc["trees"][-1] = other
        return zstandard.ZstdCompressor().compress(msgpack.packb(doc))

    monkeypatch.setattr(ep.client, "raw", forging)
    with pytest.raises(IntegrityError, match="another one: nothing was staged"):
        ep.stage()
    assert not any((ep.state_dir / ".lamina-staging").glob("*"))
    assert boot(ep.state_dir, ep.root) == []
    assert not (ep.root / "top0").exists()


def test_a_server_without_the_folders_route_is_read_blob_by_blob(
    server: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that says version 5 but answers ``/blobs/trees`` 404 (a proxy in front
    of an older one): the folders are read through ``/blobs/read``, the delivery whole."""
    ep = Endpoint(server, tmp_path, {b"same.txt": SAME}, {b"same.txt": SAME})
    files = _nested_delivery(ep)
    ep.client.server_protocol = PROTOCOL_VERSION
    raw = ep.client.raw

    def old(method: str, path: str, **kw: Any) -> bytes:
        if path == "/blobs/trees":
            raise NotFoundError("not found")
        return raw(method, path, **kw)

    monkeypatch.setattr(ep.client, "raw", old)
    paths = _paths(ep.client)
    ep.stage()
    assert sum(p.endswith("/blobs/read") for p in paths) <= 5, paths
    boot(ep.state_dir, ep.root)
    for rel, data in files.items():
        assert (ep.root / rel).read_bytes() == data


def test_the_folders_route_is_for_devices_and_their_blobs(server: Live, tmp_path: Path) -> None:
    ep = Endpoint(server, tmp_path, {b"same.txt": SAME}, {b"same.txt": SAME})
    (tmp_path / f"{tmp_path.name}-other").mkdir()
    other = Endpoint(server, tmp_path / f"{tmp_path.name}-other", {b"same.txt": SAME}, V2)
    r = ep.dev.client.post("/blobs/trees", json={"ids": [other.v2.hex()]})
    assert r.status_code == 403, r.text
    r = server.login().post("/blobs/trees", json={"ids": [ep.v2.hex()]})
    assert r.status_code == 401, r.text
    r = ep.dev.client.post("/blobs/trees", json={"ids": [ep.v2.hex()]})
    assert r.status_code == 200, r.text
    doc = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(r.content))
    assert doc["v"] == 1 and doc["asked"] == 1 and doc["links"] == []
    assert [blob.blob_id(ep.chunking.id_key, t) for t in doc["trees"]] == [ep.v2]


def test_a_revert_reads_the_snapshot_s_folders_a_level_at_a_time(
    server: Live, tmp_path: Path
) -> None:
    """A revert (and a migration: the same ``stage_tree``) plans from the snapshot's
    folders: from a version-5 server they come a level at a time, several to a request
    (``/blobs/trees`` without ``below``), not one request per folder."""
    received: dict[int, int] = {}
    for protocol in (TREES_SINCE - 1, PROTOCOL_VERSION):
        folder = tmp_path / f"{tmp_path.name}-r{protocol}"
        folder.mkdir()
        ep = Endpoint(server, folder, {b"same.txt": SAME}, {b"same.txt": SAME})
        folders: list[bytes] = []
        files = _nested_delivery(ep, folders)
        ep.client.server_protocol = protocol
        asked: list[tuple[str, set[str]]] = []
        ep.client.http.event_hooks["request"].append(
            lambda req, asked=asked: (
                asked.append((req.url.path.rsplit("/", 1)[-1], set(json.loads(req.content)["ids"])))
                if req.url.path.startswith("/api/v1/blobs/")
                else None
            )
        )
        answers = _answers(ep.client)
        params = RevertParams(snapshot="nested", root=ep.v2.hex(), system_only=False)
        stage_revert(ep.client, ep.state, ep.state_dir, params)
        received[protocol] = sum(answers)
        boot(ep.state_dir, ep.root)
        for rel, data in files.items():
            assert (ep.root / rel).read_bytes() == data
        by_folder = [route for route, ids in asked if ids & {f.hex() for f in folders}]
        if protocol >= TREES_SINCE:
            # The root, its 4 folders, their 24: one request a level.
            assert by_folder == ["trees"] * 3, asked
        else:
            assert by_folder == ["read"] * 29, asked
    # The same chunks; the folders in fewer bytes (24,911 -> 22,383 measured).
    assert received[PROTOCOL_VERSION] < received[TREES_SINCE - 1] - 1_500, received
