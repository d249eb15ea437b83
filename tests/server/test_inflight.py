"""Blobs in flight: endpoints centralizing at once upload each shared chunk once.

Real agents (``Agent.cycle``) against a real server over HTTP. The order of their
requests is fixed with events on the agents' own requests, never with timing: A is
held at its first bundle until B has been told A's blobs are coming and B's commit
has been answered "uploads pending".
"""

from __future__ import annotations

import datetime as dt
import os
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import httpx
import msgpack
import pytest
from sqlalchemy import Engine, create_engine, event, func, insert, select, update

from lamina.agent.enrollment import enroll
from lamina.agent.runner import Agent
from lamina.cli import store as cli_store
from lamina.config import ServerSettings
from lamina.db.engine import make_engine, write_tx
from lamina.db.migrate import upgrade
from lamina.db.models import blob_claimants, blob_claims, cvds, devices, policies, shared_blobs
from lamina.errors import UploadsPendingError
from lamina.protocol.bundle import MEDIA_TYPE, decode_bundle
from lamina.server.services import access, inflight
from lamina.store import blob
from lamina.store.blob import BlobKind, blob_id
from lamina.tree.model import Entry, encode_tree
from tests.e2e.conftest import _deployment
from tests.server.conftest import (
    ADMIN_PASSWORD,
    API,
    Device,
    Live,
    free_port,
    serve,
    serve_live,
)

KiB = 1024
#: Held events never wait longer than this (a hang fails the test instead of the suite).
GATE = 120.0


def settings(tmp_path: Path, threshold: int, lease: float = 3600.0) -> ServerSettings:
    return ServerSettings(
        data=tmp_path / "data",
        port=free_port(),
        admin_password=ADMIN_PASSWORD,
        share_threshold=threshold,
        claim_lease=lease,
    )


@pytest.fixture
def sharing(tmp_path: Path) -> Iterator[Live]:
    """A server that shares blobs held or claimed by one other CVD (threshold 1)."""
    s = settings(tmp_path, 1)
    for url in serve(s):
        srv = Live(url, s.data)
        yield srv
        for c in srv.clients:
            c.close()


def endpoint_tree(root: Path, shared: dict[str, bytes], name: str) -> None:
    """The shared files, and one file of this endpoint's own."""
    for rel, data in shared.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, (1_700_000_000, 1_700_000_000))
    own = root / "home" / name / "notes.bin"
    own.parent.mkdir(parents=True)
    own.write_bytes(random.Random(name).randbytes(200 * KiB))
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "os-release").write_text('NAME="Debian GNU/Linux"\nID=debian\n')


def shared_files(count: int = 6, size: int = 400 * KiB) -> dict[str, bytes]:
    rng = random.Random("shared")
    return {f"usr/lib/base/lib{i}.so": rng.randbytes(size) for i in range(count)}


@dataclass
class Seen:
    """What one agent sent: the data blob ids of its bundles, the bytes of its bundles."""

    data_ids: set[bytes] = field(default_factory=set)
    bundle_bytes: int = 0
    pending: int = 0


def enrolled(server_url: str, token: str, tmp_path: Path, name: str) -> Path:
    root = tmp_path / name / "root"
    endpoint_tree(root, SHARED, name)
    state = tmp_path / name / "state"
    enroll(server_url, token, root, state, insecure=True)
    return state


SHARED = shared_files()


def token_for(url: str) -> str:
    admin = httpx.Client(base_url=url + API, timeout=60)
    r = admin.post("/auth/login", json={"user": "admin", "password": ADMIN_PASSWORD})
    admin.headers["Authorization"] = f"Bearer {r.json()['token']}"
    if admin.get("/policies/std").status_code == 404:
        assert admin.post("/policies", json={"name": "std"}).status_code == 201
    token = admin.post("/tokens", json={"expires_in": 3600, "policy": "std", "uses": 10}).json()[
        "token"
    ]
    admin.close()
    return str(token)


def watched(
    agent: Agent, seen: Seen, before: Callable[[str], None], after_pending: Callable[[], None]
) -> None:
    """Record the agent's bundles; call ``before(path)`` ahead of each request and
    ``after_pending`` when a commit is answered "uploads pending"."""
    real = agent.client.json

    def json(method: str, path: str, **kw: Any) -> Any:
        if path == "/agent/bundles":
            body = b"".join(kw["content"])  # the agent sends a bundle as its parts
            seen.bundle_bytes += len(body)
            seen.data_ids |= {b.id for b in decode_bundle(body) if b.kind == BlobKind.DATA}
        before(path)
        try:
            return real(method, path, **kw)
        except UploadsPendingError:
            seen.pending += 1
            after_pending()
            raise

    agent.client.json = json  # type: ignore[method-assign]


def run(agent: Agent, out: dict[str, Any], key: str) -> threading.Thread:
    def go() -> None:
        try:
            out[key] = agent.cycle(force_sync=True)
        except BaseException as e:  # the test reads it
            out[key] = e
        finally:
            agent.close()

    t = threading.Thread(target=go)
    t.start()
    return t


def store_check(
    capsys: pytest.CaptureFixture[str], data: Path, db: str | None = None, store: str | None = None
) -> str:
    """``lamina store check --read-data`` (its command function, in this process)."""
    capsys.readouterr()
    cli_store.check(data=data, db=db, store=store, keyfile=None, read_data=True, as_json=False)
    return capsys.readouterr().out


def two_agents_share(url_a: str, url_b: str, tmp_path: Path) -> tuple[Seen, Seen, dict[str, Any]]:
    """A is held at its first bundle until B's commit waits for A's blobs; both finish."""
    token = token_for(url_a)
    a = Agent(enrolled(url_a, token, tmp_path, "desk-a"), insecure=True)
    b = Agent(enrolled(url_b, token, tmp_path, "desk-b"), insecure=True)
    a_asked, b_pending = threading.Event(), threading.Event()
    sa, sb = Seen(), Seen()

    def a_before(path: str) -> None:
        if path == "/agent/bundles" and not a_asked.is_set():
            a_asked.set()  # every chunk A sends is claimed: its one bundle comes after the scan
            assert b_pending.wait(GATE), "B never waited for A's blobs"

    def b_before(path: str) -> None:
        if path == "/agent/config" and not a_asked.is_set():
            assert a_asked.wait(GATE), "A never reached its upload"

    watched(a, sa, a_before, lambda: None)
    watched(b, sb, b_before, b_pending.set)
    out: dict[str, Any] = {}
    threads = [run(a, out, "a"), run(b, out, "b")]
    for t in threads:
        t.join(GATE * 2)
    assert out["a"]["synced"] and out["b"]["synced"], out
    return sa, sb, out


def test_concurrent_first_syncs_upload_each_shared_chunk_once(
    sharing: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metric = "lamina_sync_uploaded_bytes_total"
    sa, sb, _ = two_agents_share(sharing.url, sharing.url, tmp_path)
    shared_bytes = sum(len(d) for d in SHARED.values())
    # B was told A's chunks were coming: no data blob went up twice, and B waited for them.
    assert sa.data_ids and sb.data_ids and not (sa.data_ids & sb.data_ids)
    assert sb.pending >= 1
    assert sa.bundle_bytes > shared_bytes > sb.bundle_bytes
    # The server received exactly those bundles (bytes counted on its side).
    text = httpx.get(sharing.url + "/metrics").text
    received = next(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith(metric)
    )
    assert received == sa.bundle_bytes + sb.bundle_bytes
    # Both snapshots are whole: every blob they name is stored, and reads back.
    assert "no errors" in store_check(capsys, sharing.data)
    admin = sharing.login()
    for cvd in admin.get("/cvds").json():
        assert cvd["snapshots"] == 1, cvd


def test_a_claimant_that_dies_leaves_the_commit_whole(
    sharing: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A is told to send the shared chunks, then dies before sending them. B, told they are
    coming, waits; when A's claims run out (set here, as the lease would), B's commit is
    answered "missing", B scans again, uploads them, and its snapshot lands whole."""
    token = token_for(sharing.url)
    a = Agent(enrolled(sharing.url, token, tmp_path, "desk-a"), insecure=True)
    b = Agent(enrolled(sharing.url, token, tmp_path, "desk-b"), insecure=True)
    a_asked = threading.Event()
    sa, sb = Seen(), Seen()
    engine = create_engine(f"sqlite:///{sharing.data / 'lamina.db'}")

    def a_before(path: str) -> None:
        if path == "/agent/bundles":
            a_asked.set()
            raise RuntimeError("the endpoint lost power")  # A dies holding its claims

    def expire_a() -> None:  # what the lease does, without waiting for it
        with engine.begin() as c:
            c.execute(update(blob_claimants).values(expires=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)))

    watched(a, sa, a_before, lambda: None)
    out: dict[str, Any] = {}
    run(a, out, "a").join(GATE)
    assert isinstance(out["a"], RuntimeError) and a_asked.is_set()
    watched(b, sb, lambda path: None, expire_a)
    run(b, out, "b").join(GATE * 2)
    engine.dispose()
    assert not isinstance(out["b"], BaseException), out["b"]
    assert out["b"]["synced"]
    assert sb.pending == 1  # waited once, then was told to send them itself
    # B sent the shared chunks A never did
    assert len(sb.data_ids & sa.data_ids) >= len(SHARED)
    assert sb.bundle_bytes > sum(len(d) for d in SHARED.values())
    assert "no errors" in store_check(capsys, sharing.data)


def test_content_fewer_than_threshold_endpoints_hold_is_never_confirmed(live: Live) -> None:
    """The default threshold (2): a blob one other endpoint holds or uploads is answered
    exactly as an unknown one (the content oracle stays closed); one that two others
    upload is "coming", a commit naming it waits for it, then takes it as its own."""
    a, b, m = live.device("pc-a"), live.device("pc-b"), live.device("pc-m")

    def missing(d: Device, *ids: bytes) -> list[str]:
        r = d.client.post("/agent/missing", json={"ids": [i.hex() for i in ids]})
        assert r.status_code == 200, r.text
        return list(r.json()["missing"])

    def commit(d: Device, chunk: bytes, size: int) -> httpx.Response:
        [root] = d.upload([(BlobKind.TREE, encode_tree([file_entry(chunk, size)]))])
        return d.client.post("/agent/commit", json={"root": root.hex(), "files": 1, "bytes": 0})

    secret, guess = b"vpn_pin=73914\n", b"vpn_pin=00000\n"
    [held] = a.upload([(BlobKind.DATA, secret)])
    unknown = blob_id(m.id_key, guess)
    assert missing(m, held, unknown) == [held.hex(), unknown.hex()]
    ids = (held, unknown)
    refusals = [commit(m, i, len(secret)) for i in ids]
    assert [r.status_code for r in refusals] == [422, 422]
    answers = [r.json()["message"].replace(i.hex()[:16], "ID") for r, i in zip(refusals, ids)]
    assert answers[0] == answers[1]

    base = random.Random("base").randbytes(50 * KiB)
    common = blob_id(a.id_key, base)
    assert missing(a, common) == [common.hex()]  # A is told to send it (and claims it)
    assert missing(m, common) == [common.hex()]  # one other uploader: still "send it"
    # Two others upload it (it will be two endpoints' content): the third need not send it.
    assert missing(b, common) == []
    r = commit(b, common, len(base))
    assert r.status_code == 409 and r.json()["code"] == "uploads_pending", r.text
    a.upload([(BlobKind.DATA, base)])
    r = commit(b, common, len(base))  # one holder and one live claim: still coming
    assert r.status_code == 409 and r.json()["code"] == "uploads_pending", r.text
    m.upload([(BlobKind.DATA, base)])
    r = commit(b, common, len(base))
    assert r.status_code == 200, r.text
    r = b.client.post("/blobs/read", json={"ids": [common.hex()]})
    assert r.status_code == 200 and msgpack.unpackb(r.content) == [base]
    # As stored: only decrypted, for the agent to inflate and hash (tree/sources.py).
    r = b.client.post("/blobs/read", json={"ids": [common.hex()], "stored": True})
    ((raw, flag, payload),) = msgpack.unpackb(r.content)
    assert r.status_code == 200 and blob.decompress(flag, payload, raw) == base
    assert missing(b, common) == []


def file_entry(chunk: bytes, size: int) -> Entry:
    return Entry(name=b"f.bin", type="file", size=size, content=[chunk])


@pytest.mark.e2e
def test_claims_hold_across_two_servers_on_postgresql(
    pg_db_url: str,
    s3_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two `lamina server` processes on one PostgreSQL database and one S3 bucket: A syncs
    through the first, B through the second, and B is told A's chunks are coming."""
    monkeypatch.setenv("LAMINA_SHARE_THRESHOLD", "1")
    dep = _deployment(tmp_path, ["--db", pg_db_url, "--store", s3_url], 2)
    for d in dep:
        sa, sb, _ = two_agents_share(d.url_for(0), d.url_for(1), tmp_path)
        assert sa.data_ids and sb.data_ids and not (sa.data_ids & sb.data_ids)
        assert sb.pending >= 1
        assert "no errors" in store_check(capsys, d.servers[0].data, pg_db_url, s3_url)


def test_a_root_tree_other_endpoints_hold_in_common_is_taken_at_commit(live: Live) -> None:
    """Identical endpoints: a root tree two other CVDs hold is not "missing" for a third,
    so its agent never uploads it; the commit takes it as any common tree (it was refused
    as "not stored for this CVD" at every rescan, and the sync failed)."""
    devs = [live.device(f"twin-{k}") for k in range(3)]
    data = random.Random("twin").randbytes(10 * KiB)
    chunk = blob_id(devs[0].id_key, data)
    tree = encode_tree([file_entry(chunk, len(data))])
    for d in devs:
        r = d.client.post("/agent/missing", json={"ids": [chunk.hex()]})
        [root] = [blob_id(d.id_key, tree)]
        if d is not devs[2]:
            assert r.json()["missing"] == [chunk.hex()]
            d.upload([(BlobKind.DATA, data)])
            d.upload([(BlobKind.TREE, tree)])
        else:
            r = d.client.post("/agent/missing", json={"ids": [chunk.hex(), root.hex()]})
            assert r.json()["missing"] == []  # both held by two other CVDs: common
        r = d.client.post("/agent/commit", json={"root": root.hex(), "files": 1, "bytes": 0})
        assert r.status_code == 200, r.text


def test_a_bundle_answers_the_blobs_new_to_its_cvd_and_ends_their_claims(live: Live) -> None:
    """The answer counts blobs new to the uploading CVD (counted by the insert on SQLite,
    not asked first): a blob it owns already counts for nothing, one stored for another
    CVD counts as new. Every claim the bundle answers ends."""
    a, b = live.device("pc-a"), live.device("pc-b")

    def bundle(d: Device, *data: bytes) -> int:
        rows = [[int(BlobKind.DATA), blob_id(d.id_key, x), 0, x, len(x)] for x in data]
        r = d.client.post(
            "/agent/bundles",
            content=msgpack.packb({"v": 1, "blobs": rows}, use_bin_type=True),
            headers={"Content-Type": MEDIA_TYPE},
        )
        assert r.status_code == 200, r.text
        return int(r.json()["new"])

    one, two, three = (random.Random(n).randbytes(2 * KiB) for n in range(3))
    ids = [blob_id(a.id_key, x).hex() for x in (one, two, three)]
    assert a.client.post("/agent/missing", json={"ids": ids}).json()["missing"] == ids
    engine = create_engine(f"sqlite:///{live.data / 'lamina.db'}")
    try:
        with engine.connect() as c:
            assert c.execute(select(func.count()).select_from(blob_claims)).scalar() == 3
        assert bundle(a, one, two) == 2
        assert bundle(a, one, two, one) == 0  # owned already (and a repeat in the bundle)
        assert bundle(a, two, three) == 1
        assert bundle(b, one, three) == 2  # stored for A, new to B
        with engine.connect() as c:
            assert c.execute(select(func.count()).select_from(blob_claims)).scalar() == 0
    finally:
        engine.dispose()


def _cvds_db(tmp_path: Path, names: tuple[str, ...] = ("a", "b")) -> Engine:
    """A server database with an active device and CVD of each of ``names``."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with write_tx(engine) as c:
        c.execute(
            insert(policies).values(
                id="p", name="std", version=1, settings={}, created=when, updated=when
            )
        )
        for n in names:
            c.execute(
                insert(devices).values(
                    id=n,
                    hostname=n,
                    status="active",
                    facts={},
                    credential_hash=n * 64,
                    enrolled=when,
                    agent_state={},
                )
            )
            c.execute(
                insert(cvds).values(
                    id=n,
                    name=n,
                    device_id=n,
                    policy_id="p",
                    policy_version=1,
                    reference=False,
                    state="active",
                    created=when,
                    progress={},
                )
            )
    return engine


@contextmanager
def traced(engine: Engine) -> Iterator[list[str]]:
    """The SQL of every statement ``engine``'s connections run in the block (SQLite's
    trace, set on whichever connection a transaction checks out)."""
    seen: list[str] = []

    def trace(dbapi_conn: Any, *_: Any) -> None:
        dbapi_conn.set_trace_callback(seen.append)

    event.listen(engine, "checkout", trace)
    try:
        yield seen
    finally:
        event.remove(engine, "checkout", trace)


def test_a_bundles_claims_end_in_one_statement_per_batch_on_sqlite(tmp_path: Path) -> None:
    """On SQLite a bundle's claims end by ``IN`` per ``BATCH`` ids, not by primary key
    once per id (an ``executemany`` runs its statement for every row: counted by the
    driver's trace), and every one of them ends, and only the CVD's own."""
    engine = _cvds_db(tmp_path)
    on = inflight.Sharing(threshold=2)
    ids = [blake3.blake3(i.to_bytes(4, "big")).digest() for i in range(12_000)]
    try:
        with write_tx(engine) as c:
            assert len(inflight.need(c, "a", ids, set(), on)) == len(ids)
            assert len(inflight.need(c, "b", ids[:10], set(), on)) == 10
        seen: list[str] = []
        with write_tx(engine) as c:
            raw = c.connection.driver_connection
            raw.set_trace_callback(seen.append)  # type: ignore[union-attr]
            try:
                inflight.received(c, "a", ids, on)
            finally:
                raw.set_trace_callback(None)  # type: ignore[union-attr]
        deletes = [s for s in seen if s.startswith("DELETE FROM blob_claims WHERE blob_id")]
        assert len(deletes) == -(-len(ids) // inflight.BATCH)  # 3, not 12,000
        with engine.connect() as c:
            left = c.execute(select(blob_claims.c.cvd_id, func.count()).group_by("cvd_id")).all()
        assert [tuple(r) for r in left] == [("b", 10)]
    finally:
        engine.dispose()


def test_a_bundles_ownership_rows_go_in_in_id_order_and_its_common_blobs_in_one_lookup(
    tmp_path: Path,
) -> None:
    """On SQLite a bundle's ownership rows are inserted in id order (each index page
    touched once, not once per row at random: 831 -> 441 ms of CPU for 100,000 rows), and
    the blobs it makes common are found by one statement per ``BATCH`` ids (their shared
    marks and owners read together; two statements at f384b63). What is marked is
    unchanged: blobs ``threshold`` CVDs own, and only those."""
    engine = _cvds_db(tmp_path, ("a", "b", "c"))
    on = inflight.Sharing(threshold=2)
    ids = [blake3.blake3(i.to_bytes(4, "big")).digest() for i in range(12_000)]
    try:
        assert access.record(engine, "b", ids[:100], on) == 100
        assert access.record(engine, "c", ids[50:150], on) == 100  # ids[50:100]: common now
        seen: list[str] = []

        def trace(dbapi_conn: Any, *_: Any) -> None:  # whichever connection it takes
            dbapi_conn.set_trace_callback(seen.append)

        event.listen(engine, "checkout", trace)
        try:
            assert access.record(engine, "a", ids, on) == len(ids)
        finally:
            event.remove(engine, "checkout", trace)
        inserted = [s for s in seen if s.startswith("INSERT INTO cvd_blobs")]
        assert len(inserted) == len(ids)
        assert inserted == sorted(inserted)  # (x'..' literals: their order is the ids')
        lookups = [s for s in seen if s.startswith(("SELECT", "WITH")) and "shared_blobs" in s]
        assert len(lookups) == -(-len(ids) // inflight.BATCH)  # 3, not 6
        with engine.connect() as c:
            marked = {bytes(r[0]) for r in c.execute(select(shared_blobs.c.blob_id))}
        assert marked == set(ids[:150])  # b and c's 50 at their record, and now a's 150
    finally:
        engine.dispose()


def test_blobs_a_bundle_stored_first_are_not_asked_whether_they_became_common(
    tmp_path: Path,
) -> None:
    """A bundle's blobs the store did not hold before it (``intake.Intake.first``) have one
    owner, the uploading CVD: its record asks nothing of ``shared_blobs`` about them
    (one statement per 5,000 ids before: 55 of 1,300 ms of a 30,000-file first sync's
    server CPU). Two devices uploading the same blob at once both see it first, so it is
    left unmarked; the mark is only a shortcut: a third CVD's ask counts its owners,
    takes it as common and marks it."""
    engine = _cvds_db(tmp_path, ("a", "b", "c"))
    on = inflight.Sharing(threshold=2)
    ids = [blake3.blake3(i.to_bytes(4, "big")).digest() for i in range(100)]
    try:
        with traced(engine) as seen:
            assert access.record(engine, "a", ids, on, frozenset(ids)) == 100
            assert access.record(engine, "b", ids[:10], on, frozenset(ids[:10])) == 10
        assert [s for s in seen if s.startswith("INSERT INTO cvd_blobs")]
        assert not [s for s in seen if "shared_blobs" in s]
        with engine.connect() as c:
            assert c.execute(select(func.count()).select_from(shared_blobs)).scalar() == 0
        with write_tx(engine) as c:  # c lacks them: held by a and b, so common
            assert inflight.need(c, "c", ids[:20], set(ids[:20]), on) == ids[10:20]
        with engine.connect() as c:
            marked = {bytes(r[0]) for r in c.execute(select(shared_blobs.c.blob_id))}
        assert marked == set(ids[:10])
        # without ``first`` (a blob stored before), the record asks, as before
        assert access.record(engine, "c", ids[20:30], on) == 10
        assert access.record(engine, "b", ids[20:30], on) == 10
        with engine.connect() as c:
            marked = {bytes(r[0]) for r in c.execute(select(shared_blobs.c.blob_id))}
        assert marked == set(ids[:10]) | set(ids[20:30])
    finally:
        engine.dispose()


def test_an_ownership_row_costs_one_b_tree_entry(tmp_path: Path) -> None:
    """Revision 0012_srvcpu: ``cvd_blobs`` is one b-tree keyed by (blob, CVD), so a
    CVD's 20,000 blobs take under 100 bytes a row on disk (a row table, its key's index
    and an index by blob took ~210 at 0011: 21 of a 100,000-file sync's 34 MB), and
    ownership and other owners are still answered by that key."""
    engine = _cvds_db(tmp_path, ("a", "b"))
    on = inflight.Sharing(threshold=1)
    ids = sorted(blake3.blake3(i.to_bytes(4, "big")).digest() for i in range(20_000))
    try:
        assert access.record(engine, "a", ids, on) == len(ids)
        with engine.connect() as c:
            trees = c.exec_driver_sql(
                "SELECT name, sum(pgsize) FROM dbstat WHERE name IN "
                "(SELECT name FROM sqlite_schema WHERE tbl_name = 'cvd_blobs') "
                "OR name LIKE 'sqlite_autoindex_cvd_blobs%' GROUP BY name"
            ).all()
        assert [t for t, _ in trees] == ["cvd_blobs"]
        assert sum(size for _, size in trees) < 100 * len(ids)
        with write_tx(engine) as c:
            assert access.owned(c, "a", [*ids[:10], b"\0" * 32]) == set(ids[:10])
            assert access.owned(c, "b", ids[:10]) == set()
            assert inflight.need(c, "b", ids[:10], set(ids[:10]), on) == []  # a holds them
    finally:
        engine.dispose()


def test_a_claim_is_one_b_tree_entry_and_its_lease_is_its_cvds(tmp_path: Path) -> None:
    """Revision 0013_srvsql: a claim is one entry of one b-tree (``blob_claims`` keyed by
    (blob, CVD), ``WITHOUT ROWID``, no expiry of its own and no index by it: at 0012 a
    row table, its key's index and the index by expiry took three), and its lease is its
    CVD's one ``blob_claimants`` row: a bundle renews one row, not every claim's expiry.
    Another CVD's claims count while that lease runs, and not after (then swept)."""
    engine = _cvds_db(tmp_path, ("a", "b"))
    on = inflight.Sharing(threshold=1, lease=60)
    ids = sorted(blake3.blake3(i.to_bytes(4, "big")).digest() for i in range(3_000))
    try:
        with write_tx(engine) as c:
            assert inflight.need(c, "a", ids, set(), on) == ids
        with engine.connect() as c:
            trees = c.exec_driver_sql(
                "SELECT name FROM sqlite_schema WHERE tbl_name = 'blob_claims' "
                "UNION SELECT name FROM dbstat WHERE name LIKE 'sqlite_autoindex_blob_claims%'"
            ).all()
            assert [t for (t,) in trees] == ["blob_claims"]
            lease = c.execute(select(blob_claimants.c.expires)).scalar_one()
        seen: list[str] = []
        with write_tx(engine) as c:
            c.connection.driver_connection.set_trace_callback(seen.append)  # type: ignore[union-attr]
            try:
                inflight.received(c, "a", ids[:10], on)
            finally:
                c.connection.driver_connection.set_trace_callback(None)  # type: ignore[union-attr]
        assert [s for s in seen if s.startswith("UPDATE")] == [
            next(s for s in seen if s.startswith("UPDATE blob_claimants"))
        ]
        with write_tx(engine) as c:  # B is told A's 2,990 are coming
            assert inflight.need(c, "b", ids, set(), on) == ids[:10]
            c.execute(update(blob_claimants).values(expires=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)))
        with write_tx(engine) as c:  # A's lease ran out: B sends them, A's claims are gone
            assert inflight.need(c, "b", ids, set(), on) == ids
            assert (
                c.execute(
                    select(func.count()).select_from(blob_claims).where(blob_claims.c.cvd_id == "a")
                ).scalar()
                == 0
            )
        assert lease is not None
    finally:
        engine.dispose()


def test_an_ask_that_claims_nothing_new_still_renews_the_askers_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's claims count for others while A's lease runs. A scan that finds what it asks
    about claimed by others (nothing new to send) is still alive and still owes what it
    claimed earlier: its ask renews the lease, or a slow first sync's claims ran out
    while it was uploading them and the endpoints waiting on them were told "missing"
    (they then scanned and uploaded again: 11 to 140 commits a run under
    ``make bench-load``). A CVD with no claims gets no lease from asking."""
    engine = _cvds_db(tmp_path, ("a", "b", "c"))
    on = inflight.Sharing(threshold=1, lease=60)
    ids = sorted(blake3.blake3(i.to_bytes(4, "big")).digest() for i in range(20))
    mine, theirs = ids[:10], ids[10:]
    # The service's clock stands still: slow transactions must not let b's lease run out.
    start = dt.datetime.now(dt.UTC)
    monkeypatch.setattr(inflight, "now", lambda: start)
    soon = start + dt.timedelta(seconds=5)

    def leases(c: Any) -> dict[str, dt.datetime]:
        rows = c.execute(select(blob_claimants.c.cvd_id, blob_claimants.c.expires))
        return {cid: when.replace(tzinfo=dt.UTC) for cid, when in rows}

    try:
        with write_tx(engine) as c:
            assert inflight.need(c, "b", theirs, set(), on) == theirs
            assert inflight.need(c, "a", mine, set(), on) == mine
            c.execute(update(blob_claimants).values(expires=soon))
        with write_tx(engine) as c:  # a asks about what b is sending: nothing to send
            assert inflight.need(c, "a", theirs, set(), on) == []
        with engine.connect() as c:
            held = leases(c)
        assert held["a"] >= soon + dt.timedelta(seconds=50)  # renewed to about now + 60 s
        assert held["b"] == soon  # b did not ask
        with write_tx(engine) as c:  # b is still told a's are coming
            assert inflight.need(c, "b", mine, set(), on) == []
        with write_tx(engine) as c:  # c, claiming nothing, is given no lease by asking
            assert inflight.need(c, "c", theirs, set(), on) == []
            assert "c" not in leases(c)
    finally:
        engine.dispose()


def test_an_endpoint_syncing_alone_looks_up_no_claims(tmp_path: Path) -> None:
    """A claim counts only while its CVD's lease runs: with no other CVD's lease live (one
    endpoint syncing), ``need`` asks ``blob_claims`` nothing, where it looked up every id
    (133 of ~5,000 ms of a 100,000-file first sync's replayed server CPU). It still claims
    what it sends, for an endpoint that starts later; once one has, the lookups come back."""
    engine = _cvds_db(tmp_path, ("a", "b"))
    on = inflight.Sharing(threshold=1)
    ids = [blake3.blake3(i.to_bytes(4, "big")).digest() for i in range(100)]
    try:
        with traced(engine) as seen:
            with write_tx(engine) as c:
                assert inflight.need(c, "a", ids[:50], set(), on) == ids[:50]
            assert not [s for s in seen if s.startswith("SELECT") and "blob_claims" in s]
            assert [s for s in seen if s.startswith("INSERT INTO blob_claims ")]
            with write_tx(engine) as c:  # b starts: a's claims count for it
                assert inflight.need(c, "b", ids, set(), on) == ids[50:]
            assert [s for s in seen if s.startswith("SELECT") and "blob_claims" in s]
    finally:
        engine.dispose()


def test_a_sweep_keeps_a_lease_renewed_after_it_read_it_as_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep reads the expired leases, then deletes each with its claims. On PostgreSQL
    the CVD's own ask or bundle may renew its lease between the two (read committed): the
    delete must then leave that lease and its claims, or other endpoints are told to send
    what it is uploading and its own commit finds its claims gone. The interleaving made
    here by renewing the lease right after the sweep's read."""
    engine = _cvds_db(tmp_path, ("a", "b"))
    on = inflight.Sharing(threshold=1, lease=60)
    ids = sorted(blake3.blake3(i.to_bytes(4, "big")).digest() for i in range(20))
    try:
        with write_tx(engine) as c:
            assert inflight.need(c, "a", ids, set(), on) == ids
            c.execute(update(blob_claimants).values(expires=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)))
        real_run = inflight._run
        renewed = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)

        def run_then_renew(c: Any, sql: str, *rest: Any) -> list[Any]:
            rows = real_run(c, sql, *rest)
            if sql.startswith("SELECT cvd_id FROM blob_claimants"):
                assert rows == [("a",)]
                c.execute(update(blob_claimants).values(expires=renewed))  # a's bundle
            return rows

        monkeypatch.setattr(inflight, "_run", run_then_renew)
        with write_tx(engine) as c:
            inflight._sweep(c, dt.datetime.now(dt.UTC))
        monkeypatch.setattr(inflight, "_run", real_run)
        with engine.connect() as c:
            assert c.execute(select(func.count()).select_from(blob_claimants)).scalar() == 1
            assert c.execute(select(func.count()).select_from(blob_claims)).scalar() == len(ids)
        with write_tx(engine) as c:  # b is told a's are coming
            assert inflight.need(c, "b", ids, set(), on) == []
    finally:
        engine.dispose()


def test_the_last_sync_in_flight_cuts_sqlites_log_back(live: Live) -> None:
    """SQLite's write-ahead log is kept up to ~48 MB while endpoints sync (cutting it at
    every checkpoint cost CPU: ``db.sqlite_pragmas``), and cut back to nothing by the
    commit that ends the last sync in flight: not by one while another CVD is still
    uploading (its lease live), which would wait for its readers and regrow the file."""
    wal = live.data / "lamina.db-wal"
    a, b = live.device("pc-a"), live.device("pc-b")
    rng = random.Random("log")
    mine = [rng.randbytes(512) for _ in range(3000)]
    theirs = [rng.randbytes(512) for _ in range(10)]
    b_ids = [blob_id(b.id_key, x) for x in theirs]
    assert len(b.missing(b_ids)) == len(theirs)  # B is uploading: its claims and lease

    a.upload([(BlobKind.DATA, x) for x in mine])
    a.commit_files({b"a.txt": [b"a"]})
    grown = wal.stat().st_size
    assert grown > 256 * KiB  # A's sync ended while B's was in flight: the log stays

    b.commit_files({b"b.txt": theirs})
    assert wal.stat().st_size < 64 * KiB < grown  # B's ended the last one: cut back


def test_a_stopped_server_leaves_its_database_whole_and_no_log_beside_it(tmp_path: Path) -> None:
    """Stopping the server closes its database connections: the log (up to 48 MiB while
    endpoints sync) goes into the database file and is removed; what was written stays."""
    settings = ServerSettings(
        data=tmp_path / "data", port=free_port(), admin_password=ADMIN_PASSWORD
    )
    for live in serve_live(settings, Live):  # its clients closed as it stops
        pc = live.device("pc-log")
        pc.upload([(BlobKind.DATA, random.Random("stop").randbytes(4 * KiB))])
        assert (settings.data / "lamina.db-wal").stat().st_size > 0
    assert not (settings.data / "lamina.db-wal").exists()
    engine = create_engine(f"sqlite:///{settings.data / 'lamina.db'}")
    try:
        with engine.connect() as c:
            assert c.execute(select(cvds.c.id)).scalars().all() == [pc.cvd_id]
    finally:
        engine.dispose()
