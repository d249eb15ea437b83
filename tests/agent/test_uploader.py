"""The agent's upload: several bundles in flight, every chunk stored once, ids not hoarded."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from lamina.agent import uploader
from lamina.agent.transport import AgentClient
from lamina.agent.uploader import RemoteSink
from lamina.config import ServerSettings
from lamina.errors import IntegrityError
from lamina.protocol.bundle import MAX_BUNDLE_BLOBS, PART_BYTES, decode_bundle
from lamina.store import blob
from lamina.store.blob import BlobKind
from lamina.store.keys import ChunkingSecret, read_keyfile
from tests.server.conftest import ADMIN_PASSWORD, Live, free_port, serve, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data = tmp_path_factory.mktemp("uploader") / "data"
    settings = ServerSettings(data=data, port=free_port(), admin_password=ADMIN_PASSWORD)
    for url in serve(settings):
        yield Live(url, settings.data)


def agent_client(server: Live, name: str) -> tuple[AgentClient, ChunkingSecret]:
    """A client of a new enrolled device, and the store's chunking secret."""
    dev = server.device(name)
    credential = str(dev.client.headers["Authorization"]).removeprefix("Bearer ")
    chunking = read_keyfile(server.data / "keys.json").chunking
    return AgentClient(server.url, credential, None), chunking


@pytest.mark.parametrize("limit", [0, 10**9])
def test_bundles_in_flight_store_every_chunk_and_forget_their_ids(
    server: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """Four threads put 300 chunks through small bundles, several uploads at once (one
    under a bandwidth limit): afterwards the server lacks none, and the sink holds no ids
    (its memory does not grow with the snapshot's chunks)."""
    monkeypatch.setattr(uploader, "BUNDLE_BYTES", 16 * 1024)
    client, chunking = agent_client(server, f"uploader-{limit}")
    rng = random.Random(limit)
    chunks = [rng.randbytes(2048) for _ in range(300)]
    ids = [blob.blob_id(chunking.id_key, c) for c in chunks]
    sink = RemoteSink(client, chunking, bandwidth_limit=limit)
    assert sink.need(ids) == set(ids)

    def put(k: int) -> None:
        sink.put_chunk(BlobKind.DATA, ids[k], chunks[k])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, range(300)))
    sink.flush()
    assert not sink._sent  # ids of stored bundles are the server's to answer for
    assert sink._missing(ids) == set()  # every chunk stored and owned by this CVD
    assert sink.bundles >= 10 and sink.uploaded_blobs == 300
    client.close()


def test_a_bundle_holds_at_most_bundle_blobs_however_small_they_are(
    server: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100,000 tiny files once made one bundle the server refused (more blobs than
    ``MAX_BUNDLE_BLOBS``): a bundle is full at ``BUNDLE_BLOBS`` blobs, whatever its bytes."""
    assert uploader.BUNDLE_BLOBS <= MAX_BUNDLE_BLOBS
    monkeypatch.setattr(uploader, "BUNDLE_BLOBS", 40)
    client, chunking = agent_client(server, "uploader-count")
    chunks = [f"tiny file {i}\n".encode() for i in range(300)]
    ids = [blob.blob_id(chunking.id_key, c) for c in chunks]
    sink = RemoteSink(client, chunking)
    for bid, c in zip(ids, chunks, strict=True):
        sink.put_chunk(BlobKind.DATA, bid, c)
    sink.flush()
    assert sink.bundles == 8 and sink.uploaded_blobs == 300  # 7 full ones and the rest
    assert sink._missing(ids) == set()
    client.close()


def test_one_missing_question_spans_many_jobs_and_only_lacking_blobs_go_up(
    server: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan's reading jobs (here 40 of 10 small files) each ask ``need`` and put what
    it names: the server is asked once per ``ASK_BLOBS`` blobs, not once per job (40
    questions before), and a blob it holds already is never compressed or sent again."""
    monkeypatch.setattr(uploader, "ASK_BLOBS", 250)
    client, chunking = agent_client(server, "uploader-asks")
    asked = _count_asks(monkeypatch, client)
    chunks = [f"small file {i}\n".encode() * 20 for i in range(400)]
    ids = [blob.blob_id(chunking.id_key, c) for c in chunks]
    first = RemoteSink(client, chunking)
    for k in range(0, 100):  # a first sync stores 100 of them
        first.put_chunk(BlobKind.DATA, ids[k], chunks[k])
    first.flush()
    assert asked == [100] and first.uploaded_blobs == 100
    asked.clear()

    sink = RemoteSink(client, chunking)
    for job in range(40):
        part = range(job * 10, job * 10 + 10)
        need = sink.need({ids[k] for k in part})
        for k in part:
            if ids[k] in need:
                sink.put_chunk(BlobKind.DATA, ids[k], chunks[k])
    sink.flush()
    assert asked == [250, 150]  # two questions for 40 jobs
    assert sink.uploaded_blobs == 300  # the 100 the server held were not sent
    assert not sink._sent
    client.close()


def test_the_server_is_asked_and_sent_to_off_the_scans_threads(
    server: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan's thread only queues: the questions go from the sender thread and the
    bundles from the upload threads, so a scan never waits on the server's answer (but
    for ``SETTLE_AHEAD`` batches queued); ``flush`` returns once everything is stored."""
    monkeypatch.setattr(uploader, "ASK_BLOBS", 50)
    monkeypatch.setattr(uploader, "BUNDLE_BLOBS", 40)
    client, chunking = agent_client(server, "uploader-threads")
    calls: list[tuple[str, str]] = []
    real = client.json

    def recording(method: str, path: str, **kw: Any) -> Any:
        calls.append((path, threading.current_thread().name))
        return real(method, path, **kw)

    monkeypatch.setattr(client, "json", recording)
    chunks = [f"file {i}\n".encode() * 10 for i in range(300)]
    ids = [blob.blob_id(chunking.id_key, c) for c in chunks]
    sink = RemoteSink(client, chunking)
    for bid, c in zip(ids, chunks, strict=True):
        sink.put_chunk(BlobKind.DATA, bid, c)
    sink.flush()
    scan = threading.current_thread().name
    assert {p for p, t in calls if t == scan} == set()  # 300 blobs: 6 full batches
    assert {t.split("_")[0] for p, t in calls if p == "/agent/missing"} == {"lamina-sender"}
    assert {t.split("_")[0] for p, t in calls if p == "/agent/bundles"} == {"lamina-upload"}
    assert sink.uploaded_blobs == 300 and sink._missing(ids) == set()
    sink.close()
    client.close()


class FrozenClock:
    """A clock that moves only when told; counts how often it was read."""

    def __init__(self) -> None:
        self.now, self.reads = 1000.0, 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


@pytest.mark.parametrize("exact_need", [False, True])
def test_a_bundle_that_is_not_full_goes_once_it_waited_bundle_wait(
    server: Live, monkeypatch: pytest.MonkeyPatch, exact_need: bool
) -> None:
    """The server told this endpoint to send what it asked about, and tells others it is
    coming, only while this endpoint's lease runs (120 s from its last bundle or ask):
    a bundle filled slowly (a scan sharing its CPU with 200 others) must not wait for
    the end of the scan. It goes, not full, once its first blob waited ``BUNDLE_WAIT``
    by the sink's clock, while the scan puts nothing; not before."""
    monkeypatch.setattr(uploader, "ASK_BLOBS", 20)
    monkeypatch.setattr(uploader, "BUNDLE_TICK", 0.01)
    client, chunking = agent_client(server, f"uploader-aged-{exact_need}")
    chunks = [f"slow file {i} {exact_need}\n".encode() * 30 for i in range(20)]
    ids = [blob.blob_id(chunking.id_key, c) for c in chunks]
    clock = FrozenClock()
    sink = RemoteSink(client, chunking, clock=clock, exact_need=exact_need)
    for bid, c in zip(ids, chunks, strict=True):
        if sink.need([bid]):
            sink.put_chunk(BlobKind.DATA, bid, c)
    wait_for("the blobs to be asked about and bundled", lambda: len(sink._bundle) == 20)
    looked = clock.reads
    wait_for("the sender to look at the bundle's age", lambda: clock.reads >= looked + 3)
    assert sink.bundles == 0 and sink._missing(ids) == set(ids)
    clock.now += uploader.BUNDLE_WAIT
    wait_for("the aged bundle to be stored", lambda: sink.bundles == 1)
    assert sink._missing(ids) == set()  # stored before the scan's end (flush)
    assert sink.uploaded_blobs == 20
    sink.flush()
    assert sink.bundles == 1  # nothing left to send
    sink.close()
    client.close()


def _refuse_bundles(client: AgentClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server refuses every bundle ``client`` sends (and answers the rest)."""
    real = client.json

    def failing(method: str, path: str, **kw: Any) -> Any:
        if path == "/agent/bundles":
            raise IntegrityError("bundle refused: a blob does not match its id")
        return real(method, path, **kw)

    monkeypatch.setattr(client, "json", failing)


def test_an_upload_that_fails_is_raised_to_the_scan_and_by_flush(
    server: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle the server refuses stops the sync: the error
    comes out of ``put_chunk`` once the scan hands over its next batch, or ``flush``."""
    monkeypatch.setattr(uploader, "ASK_BLOBS", 10)
    monkeypatch.setattr(uploader, "BUNDLE_BLOBS", 10)
    client, chunking = agent_client(server, "uploader-fails")
    _refuse_bundles(client, monkeypatch)
    sink = RemoteSink(client, chunking)
    with pytest.raises(IntegrityError, match="bundle refused"):
        for i in range(1000):
            data = f"file {i}\n".encode()
            sink.put_chunk(BlobKind.DATA, blob.blob_id(chunking.id_key, data), data)
        sink.flush()
    assert sink.uploaded_blobs == 0
    sink.close()
    client.close()


def test_with_exact_need_an_upload_that_failed_stops_the_scan_at_its_next_blob(
    server: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a garbage collection the scan bundles as it goes (``exact_need``): a bundle
    the server refused is raised to the scan by a later ``put_chunk`` (two bundles in
    flight at most: the third waits for a slot, freed only after the failure is kept),
    not after the whole tree was read, at ``flush``."""
    monkeypatch.setattr(uploader, "BUNDLE_BLOBS", 10)
    client, chunking = agent_client(server, "uploader-fails-exact")
    _refuse_bundles(client, monkeypatch)
    sink = RemoteSink(client, chunking, exact_need=True)
    puts = 0
    with pytest.raises(IntegrityError, match="bundle refused"):
        for i in range(1000):
            data = f"file {i}\n".encode()
            sink.put_chunk(BlobKind.DATA, blob.blob_id(chunking.id_key, data), data)
            puts += 1
    assert puts < 1000  # raised by put_chunk, before any flush
    sink.close()
    client.close()


def test_a_bundle_goes_up_as_its_parts_not_one_joined_body(
    server: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle is posted as its parts with its length (a large payload as views of its
    own bytes: no 8 MiB body joined and copied again by each partial socket send); the
    server reads the same version 1 bundle and stores every blob."""
    client, chunking = agent_client(server, "uploader-parts")
    bodies: list[Any] = []
    real = client.json

    def recording(method: str, path: str, **kw: Any) -> Any:
        if path == "/agent/bundles":
            bodies.append((list(kw["content"]), kw["headers"]["Content-Length"]))
        return real(method, path, **kw)

    monkeypatch.setattr(client, "json", recording)
    rng = random.Random(7)
    chunks = [rng.randbytes(PART_BYTES + 4096) for _ in range(3)] + [b"small" * 100]
    ids = [blob.blob_id(chunking.id_key, c) for c in chunks]
    sink = RemoteSink(client, chunking)
    for bid, c in zip(ids, chunks, strict=True):
        sink.put_chunk(BlobKind.DATA, bid, c)
    sink.flush()
    [(parts, length)] = bodies
    assert isinstance(parts, list) and int(length) == sum(len(p) for p in parts)
    assert max(len(p) for p in parts) <= PART_BYTES + 64
    assert sum(isinstance(p, memoryview) for p in parts) >= 6  # 3 random chunks, 2 views each
    assert [b.id for b in decode_bundle(b"".join(parts))] == ids
    assert sink.uploaded_bytes == int(length) and sink._missing(ids) == set()
    client.close()


def test_a_sent_bundles_payloads_are_freed_without_the_cyclic_collector(
    server: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx's request and response refer to each other, so what a request holds is
    freed by the collector's next pass, not when the upload ends: a sync's bundles,
    sent as lists of their payloads, waited there (995 MiB of them over a 1 GiB first
    sync, a peak RSS 130 MiB higher once the agent's passes were made rarer). Sent, a
    bundle's list of payloads holds them no more, so no request the agent made still
    refers to a payload, whenever the collector next runs."""
    client, chunking = agent_client(server, "uploader-freed")
    sent: list[list[Any]] = []
    real = client.json

    def recording(method: str, path: str, **kw: Any) -> Any:
        if path == "/agent/bundles":
            sent.append(kw["content"])  # the very list the request is given
        return real(method, path, **kw)

    monkeypatch.setattr(client, "json", recording)
    rng = random.Random(9)
    sink = RemoteSink(client, chunking)
    try:
        for _ in range(16):  # two bundles of incompressible MiBs
            chunk = rng.randbytes(1 << 20)
            sink.put_chunk(BlobKind.DATA, blob.blob_id(chunking.id_key, chunk), chunk)
        sink.flush()
        assert sink.bundles == len(sent) == 2
        assert [len(parts) for parts in sent] == [0, 0]
    finally:
        sink.close()
        client.close()


def test_views_are_compressed_as_put_while_the_server_lacks_most_of_what_is_asked(
    server: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reading thread's chunks are views of its buffer: while the server's last answer
    said it lacked at least half of the bytes asked about, ``put_chunk`` compresses them
    on the scan's thread (instead of copying them to keep); once an answer says the
    server holds most (a second endpoint), they are kept as plaintext until asked about
    and only what it lacks is compressed. The buffer is reused as soon as ``put_chunk``
    returns: the server, which checks every blob against its id, gets the chunks put."""
    monkeypatch.setattr(uploader, "ASK_BLOBS", 10)
    client, chunking = agent_client(server, "uploader-ahead")
    compressed: list[tuple[bytes, str]] = []
    real = blob.compress

    def counting(data: bytes | memoryview) -> tuple[int, bytes]:
        compressed.append((bytes(data), threading.current_thread().name))
        return real(data)

    monkeypatch.setattr(blob, "compress", counting)
    scan = threading.current_thread().name
    chunks = [f"chunk {i} ".encode() * 300 for i in range(60)]
    ids = [blob.blob_id(chunking.id_key, c) for c in chunks]
    buffer = bytearray(4096)
    sink = RemoteSink(client, chunking)

    def put(k: int) -> None:
        buffer[: len(chunks[k])] = chunks[k]
        sink.put_chunk(BlobKind.DATA, ids[k], memoryview(buffer)[: len(chunks[k])])
        buffer[:] = bytes(len(buffer))  # the reading thread's next read

    for k in range(20):  # no answer yet: kept as plaintext
        put(k)
    sink.flush()  # the server lacked them all
    assert [t for _, t in compressed] and scan not in {t for _, t in compressed}
    compressed.clear()
    for k in range(20, 40):  # compressed as they are put, by the scan's thread
        put(k)
    assert [c for c, t in compressed if t == scan] == chunks[20:40]
    sink.flush()
    assert {t for _, t in compressed} == {scan}  # none compressed twice
    compressed.clear()
    for k in range(0, 10):  # a second endpoint's chunks: the server holds them
        put(k)
    sink.flush()
    assert [c for c, _ in compressed] == chunks[0:10]  # put before that answer: wasted
    compressed.clear()
    for k in [*range(10, 20), *range(40, 50)]:  # held: kept, never compressed
        put(k)
    sink.flush()
    assert [c for c, t in compressed] == chunks[40:50]  # what the server lacked, once
    assert scan not in {t for _, t in compressed}
    assert sink.uploaded_blobs == 50 and sink._missing(ids[:50]) == set()
    client.close()


def test_a_jobs_chunks_put_at_once_ask_and_go_up_as_put_one_at_a_time(
    server: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``put_chunks`` (a reading thread's job in one call) queues what ``need`` and
    ``put_chunk`` would: a blob twice in a job or in two jobs once, one question per
    ``ASK_BLOBS``, and only what the server lacks goes up."""
    monkeypatch.setattr(uploader, "ASK_BLOBS", 250)
    client, chunking = agent_client(server, "uploader-many")
    asked = _count_asks(monkeypatch, client)
    chunks = [f"a job's small file {i}\n".encode() * 20 for i in range(400)]
    ids = [blob.blob_id(chunking.id_key, c) for c in chunks]
    first = RemoteSink(client, chunking)
    first.put_chunks(BlobKind.DATA, list(zip(ids[:100], chunks[:100], strict=True)))
    first.flush()
    assert asked == [100] and first.uploaded_blobs == 100
    asked.clear()

    sink = RemoteSink(client, chunking)
    for job in range(40):
        part = list(range(job * 10, job * 10 + 10))
        part += [part[0], max(0, part[0] - 1)]  # again in this job, and from the last one
        sink.put_chunks(BlobKind.DATA, [(ids[k], chunks[k]) for k in part])
    sink.flush()
    assert asked == [250, 150]  # each blob asked about once, in two questions
    assert sink.uploaded_blobs == 300  # the 100 the server held were not sent
    assert not sink._sent and sink._missing(ids) == set()
    client.close()


@pytest.mark.parametrize("exact_need", [False, True])
def test_blobs_compressed_elsewhere_go_up_as_they_came_and_only_what_the_server_lacks(
    server: Live, monkeypatch: pytest.MonkeyPatch, exact_need: bool
) -> None:
    """A scan's worker process compresses its chunks (``put_compressed``): the sink never
    compresses them again, asks about them as about a reading thread's (with
    ``exact_need``, before queuing them), and sends only what the server lacks, each
    payload as it came (the server inflates and hashes every blob against its id: a
    payload sent wrong is refused). A chunk zstd cannot shrink comes as it is."""
    monkeypatch.setattr(uploader, "ASK_BLOBS", 250)
    client, chunking = agent_client(server, f"uploader-compressed-{exact_need}")
    rng = random.Random(7)
    chunks = [f"a worker's small file {i}\n".encode() * 40 for i in range(59)]
    chunks.append(rng.randbytes(3000))
    ids = [blob.blob_id(chunking.id_key, c) for c in chunks]
    rows = [(bid, *blob.compress(c), len(c)) for bid, c in zip(ids, chunks, strict=True)]
    assert rows[-1][1] == blob.FLAG_RAW and {r[1] for r in rows[:-1]} == {blob.FLAG_ZSTD}
    first = RemoteSink(client, chunking)
    first.put_chunks(BlobKind.DATA, list(zip(ids[:20], chunks[:20], strict=True)))
    first.flush()
    compressed: list[bytes] = []
    real = blob.compress

    def counting(data: bytes | memoryview) -> tuple[int, bytes]:
        compressed.append(bytes(data))
        return real(data)

    monkeypatch.setattr(blob, "compress", counting)
    asked = _count_asks(monkeypatch, client)
    sink = RemoteSink(client, chunking, exact_need=exact_need)
    for job in range(6):  # a job's chunks, one of the last job's again, one twice
        part = [*range(job * 10, job * 10 + 10), max(0, job * 10 - 1), job * 10]
        sink.put_compressed(BlobKind.DATA, [rows[k] for k in part])
    sink.flush()
    assert compressed == []
    assert sink.uploaded_blobs == 40  # the 20 the server held were not sent
    if exact_need:
        assert len(asked) == 6  # one question a job, before its blobs are queued
    else:
        assert asked == [60]  # each id once, the jobs' blobs in one question
    assert not sink._sent and sink._missing(ids) == set()
    client.close()


def _count_asks(monkeypatch: pytest.MonkeyPatch, client: Any) -> list[int]:
    """The number of ids in each ``/agent/missing`` question ``client`` asks from now on."""
    asked: list[int] = []
    real = client.json

    def counting(method: str, path: str, **kw: Any) -> Any:
        if path == "/agent/missing":
            asked.append(len(kw["json"]["ids"]))
        return real(method, path, **kw)

    monkeypatch.setattr(client, "json", counting)
    return asked
