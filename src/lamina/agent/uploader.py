"""The agent's blob sink: asks the server what it lacks, uploads the rest in bundles.

Which blobs the server lacks is asked in batches that span the scan's jobs: ``need``
answers from what the sink knows (ids already queued or being uploaded are not
needed again), ``put_chunk`` queues the rest with their plaintext, and once
``ASK_BLOBS`` blobs or ``ASK_BYTES`` of plaintext are queued (or at ``flush``) one
``/agent/missing`` asks about all of them, in the order they were put (a tree after
what it names). Only the blobs the server lacks are then compressed (the agent has
the chunking secret, never the data key) and sent in bundles of about 8 MiB,
``IN_FLIGHT`` at once; the server verifies, encrypts and stores each bundle durably
before answering, so an interrupted sync resumes without sending a bundle twice. An
optional bandwidth limit paces uploads (one at a time). A bundle goes as its parts
(``bundle_parts``: the payloads are not copied into one body).

While the server's answers say it lacks most of what is asked about (a first sync),
``put_chunk`` compresses a chunk handed over as a view of a reading thread's buffer
(a large file's) at once, on the scan's thread, instead of copying it to keep it until
the answer: no plaintext copy, the queue holds the smaller compressed bytes, and the
scan's threads compress in parallel (zstd lets go of the GIL). A blob put as ``bytes``
(a small file, a tree) is kept as it is, and compressed by the sender once the server
says it lacks it; so is every blob once the answers say the server holds most of what
is asked about (a second endpoint of the same image): only what it lacks is compressed.
A scan's worker process (``tree.scan_proc``, a sync of many small files) compresses its
chunks itself meanwhile (``compress_ahead``) and hands them over compressed
(``put_compressed``), else as plaintext (``put_chunks``).

The scan's threads do not wait on the server: a full batch goes to the sink's sender
thread (at most ``SETTLE_AHEAD`` batches queued: a scan ahead of the server waits for
it, its memory bounded), which asks about it, compresses what the server lacks and
hands each full bundle to one of ``IN_FLIGHT`` upload threads. A failure there is
raised to the scan at its next blob, and by ``flush``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

from lamina.agent.transport import AgentClient, retrying
from lamina.protocol.bundle import MEDIA_TYPE, BundleBlob, bundle_parts
from lamina.store import blob
from lamina.store.batch import TreeBatcher
from lamina.store.blob import BlobKind
from lamina.store.chunking import ChunkingSecret

BUNDLE_BYTES = 8 * 1024 * 1024
#: Content (before compression) per bundle; the server refuses more than 256 MiB.
BUNDLE_RAW_BYTES = 64 * 1024 * 1024
#: Blobs per bundle: many tiny files fill a bundle by count long before its bytes (the
#: server refuses more than ``MAX_BUNDLE_BLOBS``).
BUNDLE_BLOBS = 10_000
MISSING_BATCH = 5000
#: Blobs queued (and the bytes they hold: plaintext, or compressed once the server lacks
#: most of what is asked) before one ``/agent/missing`` asks about them: a question per
#: many of the scan's jobs (each up to 256 small files) rather than one per job, with a
#: bound on the bytes the sink holds.
ASK_BLOBS = 2048
ASK_BYTES = 4 * 1024 * 1024
#: Bundles uploaded at once (each over one of the client's keep-alive connections) when
#: no bandwidth limit paces them: the server verifies one while the next is sent.
IN_FLIGHT = 2
#: Full batches waiting for the sender thread before a scan's thread waits for it.
SETTLE_AHEAD = 2
#: Seconds a bundle that is not full waits for more blobs before it goes anyway. The
#: server told this endpoint to send its blobs and tells other endpoints they are coming
#: (their commits wait for them) only while this endpoint's lease runs (120 s, renewed
#: by each bundle it stores): a bundle filled slowly (a scan sharing its CPU with many
#: others, or finding little the server lacks) must not hold them until the scan ends.
BUNDLE_WAIT = 20.0
#: Seconds between the sender thread's looks at the bundle's age while no batch comes.
BUNDLE_TICK = 2.0


class Queued(NamedTuple):
    """A blob put but not yet asked about: compressed already (``flag`` and ``data`` as
    a bundle carries them) or, with ``flag`` None, its plaintext."""

    kind: BlobKind
    id: bytes
    flag: int | None
    data: bytes | memoryview
    raw_length: int


class RemoteSink:
    def __init__(
        self,
        client: AgentClient,
        chunking: ChunkingSecret,
        *,
        bandwidth_limit: int = 0,
        on_upload: Callable[[int], None] | None = None,
        exact_need: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        #: what a bundle's age is read from (``BUNDLE_WAIT``)
        self._clock = clock
        #: ``need`` asks the server (each call, as it answers): for a scan that checks
        #: its files cache's chunk ids against the server after a garbage collection
        #: (``FilesCache.stale``); put blobs are then bundled without another question
        self.exact_need = exact_need
        self._chunking = chunking
        self.bandwidth_limit = bandwidth_limit
        self.on_upload = on_upload
        self._lock = threading.Lock()
        #: one upload at a time under a bandwidth limit keeps the pacing honest
        self._slots = threading.BoundedSemaphore(1 if bandwidth_limit > 0 else IN_FLIGHT)
        self._report_lock = threading.Lock()
        #: ids queued or being uploaded, never asked about again meanwhile; an id leaves
        #: once its bundle is stored (the server then answers for it), so this holds at
        #: most a few bundles' ids, not every chunk of the snapshot
        self._sent: set[bytes] = set()
        self._bundle: list[BundleBlob] = []
        #: blobs put but not yet asked about, in the order put
        self._ask: list[Queued] = []
        #: full batches for the sender thread (None: stop), which runs while a scan puts
        self._batches: queue.Queue[list[Queued] | None] = queue.Queue(SETTLE_AHEAD)
        self._sender: threading.Thread | None = None
        self._uploads = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="lamina-upload")
        self._pending: list[Future[None]] = []
        #: the first failure of the sender or of an upload, raised to the scan
        self._error: BaseException | None = None
        self._closed = False
        self._ask_bytes = 0
        #: compress blobs as they are put: the last answer said the server lacked at
        #: least half of the bytes asked about (none yet: not until one says so)
        self._ahead = False
        #: folders' trees, asked about in batches (the store's writer batches the same way)
        self._trees = TreeBatcher(self.need, self._put_tree)
        self._bundle_size = 0
        self._bundle_raw = 0
        #: when the bundle being filled got its first blob (``_clock``)
        self._bundle_since = 0.0
        self.uploaded_bytes = 0
        self.uploaded_blobs = 0
        self.bundles = 0
        self._window_start = time.monotonic()
        self._window_bytes = 0

    @property
    def chunking(self) -> ChunkingSecret:
        return self._chunking

    @property
    def compress_ahead(self) -> bool:
        """Whether blobs are compressed as they are put (a scan's worker process sends its
        chunks compressed then, ``put_compressed``): the last answer said the server
        lacked at least half of the bytes asked about."""
        return self._ahead

    def need(self, ids: Collection[bytes]) -> set[bytes]:
        """The ids not queued or being uploaded already. The server is asked about them
        once they are put (``put_chunk``), many jobs' blobs in one question; with
        ``exact_need``, here, and only those it lacks are returned."""
        with self._lock:
            fresh = [i for i in set(ids) if i not in self._sent]
        return self._missing(fresh) if self.exact_need else set(fresh)

    def _missing(self, ids: list[bytes]) -> set[bytes]:
        """Which of ``ids`` the server lacks (``/agent/missing``, ``MISSING_BATCH`` at a time)."""
        missing: set[bytes] = set()
        for i in range(0, len(ids), MISSING_BATCH):
            body = {"ids": [x.hex() for x in ids[i : i + MISSING_BATCH]]}

            def ask(body: dict[str, list[str]] = body) -> Any:
                return self.client.json("POST", "/agent/missing", json=body)

            missing.update(bytes.fromhex(h) for h in retrying(ask)["missing"])
        return missing

    def put_chunk(self, kind: BlobKind, bid: bytes, data: bytes | memoryview) -> None:
        """Queue a blob to ask about (again under a queued or uploading id: ignored);
        ``data`` is kept until then, compressed or as plaintext (a memoryview is read
        before this returns: its buffer may be reused). An upload that failed is raised
        here, to the scan, not only at ``flush``."""
        self._check()
        if self.exact_need:  # ``need`` asked the server already: bundle it
            self._bundle_asked(Queued(kind, bid, None, data, len(data)))
            return
        with self._lock:
            if bid in self._sent:
                return
            ahead = self._ahead
        if ahead and isinstance(data, memoryview):  # compressed instead of copied
            flag, payload = blob.compress(data)
            row = Queued(kind, bid, flag, payload, len(data))
        else:
            row = Queued(kind, bid, None, bytes(data), len(data))
        with self._lock:
            if bid in self._sent:  # put by another thread meanwhile
                return
            self._sent.add(bid)
            self._ask.append(row)
            self._ask_bytes += len(row.data)
            if len(self._ask) < ASK_BLOBS and self._ask_bytes < ASK_BYTES:
                return
            batch = self._take_ask()
        self._hand_over(batch)

    def put_chunks(self, kind: BlobKind, chunks: list[tuple[bytes, bytes | memoryview]]) -> None:
        """``put_chunk`` for each of a reading thread's chunks (id, content), in order,
        with one check and one lock for them all: a job of small files is up to 256
        blobs. The same queue, the same batches, the same bytes as one call each."""
        self._check()
        if self.exact_need:  # the server is asked first, as ``need`` and ``put_chunk`` do
            self._bundle_lacking([Queued(kind, bid, None, data, len(data)) for bid, data in chunks])
            return
        with self._lock:
            sent = self._sent
            fresh = [c for c in chunks if c[0] not in sent]
            ahead = self._ahead
        self._queue(
            [
                Queued(kind, bid, *blob.compress(data), len(data))
                if ahead and isinstance(data, memoryview)  # compressed instead of copied
                else Queued(kind, bid, None, bytes(data), len(data))
                for bid, data in fresh
            ]
        )

    def put_compressed(self, kind: BlobKind, blobs: list[tuple[bytes, int, bytes, int]]) -> None:
        """``put_chunks`` for blobs compressed elsewhere (a scan's worker process, while
        ``compress_ahead``): (id, flag, payload, raw length)."""
        self._check()
        rows = [Queued(kind, bid, flag, payload, raw) for bid, flag, payload, raw in blobs]
        if self.exact_need:
            self._bundle_lacking(rows)
        else:
            self._queue(rows)

    def _bundle_lacking(self, rows: list[Queued]) -> None:
        """With ``exact_need``: ask the server about ``rows`` and bundle, in order and
        once each, those it lacks."""
        need = self.need({row.id for row in rows})
        for row in rows:
            if row.id in need:
                need.discard(row.id)
                self._bundle_asked(row)

    def _bundle_asked(self, row: Queued) -> None:
        """Bundle a blob ``need`` asked the server about (``exact_need``): again under an
        id queued or being uploaded, ignored."""
        with self._lock:
            if row.id in self._sent:
                return
            self._sent.add(row.id)
        self._start_sender()  # (it sends a bundle that waited too long)
        self._bundle_blob(row)

    def _queue(self, rows: list[Queued]) -> None:
        """Queue blobs to ask about, in order (one put meanwhile, or twice, is skipped);
        each full batch goes to the sender."""
        batches: list[list[Queued]] = []
        with self._lock:
            sent = self._sent
            for row in rows:
                if row.id in sent:  # put meanwhile, or twice in this job
                    continue
                sent.add(row.id)
                self._ask.append(row)
                self._ask_bytes += len(row.data)
                if len(self._ask) >= ASK_BLOBS or self._ask_bytes >= ASK_BYTES:
                    batches.append(self._take_ask())
        for batch in batches:
            self._hand_over(batch)

    def _take_ask(self) -> list[Queued]:
        """The queued blobs, the queue emptied (the caller holds ``_lock``)."""
        batch, self._ask, self._ask_bytes = self._ask, [], 0
        return batch

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _fail(self, e: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = e

    def _hand_over(self, batch: list[Queued]) -> None:
        """Queue a full batch for the sender thread."""
        self._start_sender()
        self._batches.put(batch)

    def _start_sender(self) -> None:
        """Start the sender thread unless it runs (the first batch, or with ``exact_need``
        the first blob bundled, starts it)."""
        with self._lock:
            if self._sender is None and not self._closed:
                self._sender = threading.Thread(
                    target=self._send_batches, name="lamina-sender", daemon=True
                )
                self._sender.start()

    def _send_batches(self) -> None:
        """The sender thread: settle batches in the order put until told to stop; after
        a failure, drop them (a scan's thread never waits on a queue nobody empties).
        While none comes, a bundle that waited ``BUNDLE_WAIT`` goes as it is."""
        while True:
            try:
                batch = self._batches.get(timeout=BUNDLE_TICK)
            except queue.Empty:
                batch = []
            if batch is None:
                return
            try:
                if self._error is None and not self._closed:
                    self._settle(batch)
                    self._send_aged()
            except BaseException as e:  # raised to the scan by _check
                self._fail(e)

    def _send_aged(self) -> None:
        """Upload the bundle being filled if its first blob waited ``BUNDLE_WAIT``."""
        with self._lock:
            if not self._bundle or not self._aged():
                return
            full = self._take_bundle()
        self._upload(full)

    def _aged(self) -> bool:
        """Whether the bundle being filled waited ``BUNDLE_WAIT`` (the caller holds
        ``_lock``)."""
        return self._clock() - self._bundle_since >= BUNDLE_WAIT

    def _take_bundle(self) -> list[BundleBlob]:
        """The bundle being filled, a new one begun (the caller holds ``_lock``)."""
        full, self._bundle, self._bundle_size, self._bundle_raw = self._bundle, [], 0, 0
        return full

    def _settle(self, batch: list[Queued]) -> None:
        """Ask about a batch; bundle what the server lacks, in the order put, and forget
        the rest's ids (the server answers for those from now on)."""
        if not batch:
            return
        missing = self._missing([row.id for row in batch])
        held = [row.id for row in batch if row.id not in missing]
        with self._lock:
            self._sent.difference_update(held)
        lacking = sum(row.raw_length for row in batch if row.id in missing)
        self._ahead = lacking * 2 >= sum(row.raw_length for row in batch)
        # last first, so that each plaintext is let go once it is compressed: the batch
        # holds none of it while a full bundle is sent
        todo = [row for row in reversed(batch) if row.id in missing]
        batch.clear()
        while todo:
            self._bundle_blob(todo.pop())

    def _bundle_blob(self, row: Queued) -> None:
        if row.flag is None:
            flag, payload = blob.compress(row.data)
        else:
            flag, payload = row.flag, bytes(row.data)
        full: list[BundleBlob] | None = None
        with self._lock:
            if not self._bundle:
                self._bundle_since = self._clock()
            self._bundle.append(BundleBlob(int(row.kind), row.id, flag, payload, row.raw_length))
            self._bundle_size += len(payload)
            self._bundle_raw += row.raw_length
            if (
                self._bundle_size >= BUNDLE_BYTES
                or self._bundle_raw >= BUNDLE_RAW_BYTES
                or len(self._bundle) >= BUNDLE_BLOBS
                or self._aged()
            ):
                full = self._take_bundle()
        if full:
            self._upload(full)

    def put(self, kind: BlobKind, data: bytes) -> bytes:
        """Queue a blob (a folder's tree); whether the server lacks it is asked in
        batches (``TreeBatcher``), not once per folder. ``flush`` settles the rest."""
        bid = blob.blob_id(self._chunking.id_key, data)
        if kind != BlobKind.TREE:
            if self.need([bid]):
                self.put_chunk(kind, bid, data)
            return bid
        with self._lock:
            sent = bid in self._sent
        if not sent:
            self._trees.add(bid, data)
        return bid

    def _put_tree(self, bid: bytes, data: bytes) -> None:
        self.put_chunk(BlobKind.TREE, bid, data)

    def flush(self) -> None:
        """Settle and upload everything put; return once the server stored it all (or
        raise what failed). Called once no thread puts any more."""
        self._trees.settle()
        with self._lock:
            batch = self._take_ask()
        self._stop_sender()
        self._check()
        self._settle(batch)
        with self._lock:
            full = self._take_bundle()
        if full:
            self._upload(full)
        with self._lock:
            pending, self._pending = self._pending, []
        for f in pending:
            f.result()
        self._check()

    def close(self) -> None:
        """Stop the sender and upload threads (what they still hold is not sent)."""
        self._closed = True
        self._stop_sender()
        self._uploads.shutdown(wait=True, cancel_futures=True)

    def _stop_sender(self) -> None:
        """Let the sender thread settle what is queued (unless closed) and end."""
        if self._sender is not None:
            self._batches.put(None)
            self._sender.join()
            self._sender = None

    def _upload(self, blobs: list[BundleBlob]) -> None:
        """Send a full bundle on an upload thread; ``blobs`` is emptied (the caller's
        list). The bundle goes as its parts (views of the payloads, no joined body), so
        a sync holds its payloads once: at most ``IN_FLIGHT`` bundles being sent and the
        one being filled."""
        self._slots.acquire()
        try:
            size, parts = bundle_parts(blobs)
            ids = [b.id for b in blobs]
            blobs.clear()
            sent = self._uploads.submit(self._send, size, parts, ids)
            with self._lock:  # the scan's threads upload too with ``exact_need``
                self._pending = [f for f in self._pending if not f.done()]
                self._pending.append(sent)
        except BaseException:
            self._slots.release()
            raise

    def _send(self, size: int, parts: list[bytes | memoryview], ids: list[bytes]) -> None:
        """An upload thread: post one bundle (``size`` bytes in ``parts``), then free its
        slot."""
        headers = {"Content-Type": MEDIA_TYPE, "Content-Length": str(size)}
        try:
            retrying(
                lambda: self.client.json("POST", "/agent/bundles", content=parts, headers=headers)
            )
            with self._lock:
                self.bundles += 1
                self.uploaded_blobs += len(ids)
                self.uploaded_bytes += size
                self._sent.difference_update(ids)
            if self.on_upload:
                with self._report_lock:
                    self.on_upload(size)
            self._pace(size)
        except BaseException as e:
            self._fail(e)
            raise
        finally:
            # httpx's request and response refer to each other (a cycle the collector
            # frees, not reference counting) and the request to ``parts``: emptied here,
            # the bundle's payloads are freed now, not at the collector's next pass.
            parts.clear()
            self._slots.release()

    def _pace(self, nbytes: int) -> None:
        if self.bandwidth_limit <= 0:
            return
        self._window_bytes += nbytes
        elapsed = time.monotonic() - self._window_start
        due = self._window_bytes / self.bandwidth_limit
        if due > elapsed:
            time.sleep(due - elapsed)
