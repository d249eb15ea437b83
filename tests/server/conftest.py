"""A real server in this process: ``create_app`` served by uvicorn on a loopback port.

Tests talk to it over HTTP with httpx, as any client would. ``Live`` makes users
of each role and enrolls devices that upload and commit trees built by hand.

Service tests take ``engine``: a migrated database, on SQLite and (marked e2e) on
PostgreSQL, or ``sqlite_engine`` for SQLite only.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgpack
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine

from lamina.config import ServerSettings
from lamina.db.engine import make_engine
from lamina.db.migrate import upgrade
from lamina.protocol.bundle import MEDIA_TYPE
from lamina.server.app import KEEP_ALIVE_SECONDS, create_app
from lamina.server.services import store_ops
from lamina.store.blob import BlobKind, blob_id, compress
from lamina.store.keys import KEYFILE_NAME, ChunkingSecret, StoreKeys, write_keyfile
from lamina.tree.model import Entry, encode_tree

API = "/api/v1"
ADMIN_PASSWORD = "admin-password-123"


def migrated(url: str) -> Iterator[Engine]:
    e = make_engine(url)
    upgrade(e)
    yield e
    e.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated server database: SQLite, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield from migrated(f"sqlite:///{tmp_path / 'server.db'}")
    else:
        yield from migrated(request.getfixturevalue("pg_db_url"))


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    yield from migrated(f"sqlite:///{tmp_path / 'server.db'}")


def wait_for(what: str, cond: Callable[[], bool]) -> None:
    """Return once ``cond()`` holds; a minute without it fails the test (a bound on a
    hang, never a measure: the condition, not the time, is what is tested)."""
    deadline = time.monotonic() + 60
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")
        time.sleep(0.01)


#: A store's keys fixed, not drawn: a test that bounds what depends on where chunk
#: boundaries fall (a delta's framing, the chunks around a change) writes them into its
#: server's data folder before the server starts (``fixed_keys``).
FIXED_KEYS = StoreKeys(
    store_id="00000000-0000-4000-8000-00000000de17",
    chunking=ChunkingSecret(0x5EED_DE17A, bytes(range(32))),
    data_key=bytes(range(32, 64)),
)


def fixed_keys(data: Path) -> Path:
    """``data`` (made if need be) with ``FIXED_KEYS`` as its store's key file: the server
    started on it uses them instead of drawing new ones."""
    data.mkdir(parents=True, exist_ok=True)
    write_keyfile(data / KEYFILE_NAME, FIXED_KEYS)
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Device:
    """An enrolled, centralized device: its API client and its id key."""

    client: httpx.Client
    id_key: bytes
    cvd_id: str

    def bundle(self, blobs: list[tuple[BlobKind, bytes]]) -> tuple[bytes, list[bytes]]:
        """The body of a bundle holding ``blobs``, and their ids."""
        rows, ids = [], []
        for kind, data in blobs:
            flag, payload = compress(data)
            bid = blob_id(self.id_key, data)
            rows.append([int(kind), bid, flag, payload, len(data)])
            ids.append(bid)
        return bytes(msgpack.packb({"v": 1, "blobs": rows}, use_bin_type=True)), ids

    def upload(self, blobs: list[tuple[BlobKind, bytes]]) -> list[bytes]:
        body, ids = self.bundle(blobs)
        r = self.client.post("/agent/bundles", content=body, headers={"Content-Type": MEDIA_TYPE})
        assert r.status_code == 200, r.text
        return ids

    def missing(self, ids: list[bytes]) -> list[str]:
        """Which of ``ids`` the server asks this device to upload."""
        r = self.client.post("/agent/missing", json={"ids": [i.hex() for i in ids]})
        assert r.status_code == 200, r.text
        return list(r.json()["missing"])

    def commit_files(self, files: dict[bytes, list[bytes | int]]) -> str:
        """Upload a one-folder tree of files (content: data or hole sizes); returns the snapshot id."""
        entries = []
        for name, content in files.items():
            data = [c for c in content if isinstance(c, bytes)]
            ids = iter(self.upload([(BlobKind.DATA, d) for d in data]))
            entries.append(
                Entry(
                    name=name,
                    type="file",
                    size=sum(c if isinstance(c, int) else len(c) for c in content),
                    content=[c if isinstance(c, int) else next(ids) for c in content],
                )
            )
        [root] = self.upload([(BlobKind.TREE, encode_tree(entries))])
        r = self.client.post("/agent/commit", json={"root": root.hex(), "files": 1, "bytes": 0})
        assert r.status_code == 200, r.text
        return str(r.json()["snapshot"]["id"])


@dataclass
class Live:
    url: str
    data: Path
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.Client(base_url=self.url + API, headers=headers, timeout=60)
        self.clients.append(c)
        return c

    def login(self, user: str = "admin", password: str = ADMIN_PASSWORD) -> httpx.Client:
        # httpx's default (5 s) is too short for a password check on a loaded 2-core box.
        r = httpx.post(
            self.url + API + "/auth/login",
            json={"user": user, "password": password},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        return self.client(r.json()["token"])

    def user(self, name: str, role: str) -> httpx.Client:
        password = f"{name}-password-1"
        r = self.login().post("/users", json={"name": name, "password": password, "role": role})
        assert r.status_code == 201, r.text
        return self.login(name, password)

    def device(self, hostname: str) -> Device:
        admin = self.login()
        if admin.get("/policies/std").status_code == 404:
            assert admin.post("/policies", json={"name": "std"}).status_code == 201
        token = admin.post("/tokens", json={"expires_in": 3600, "policy": "std"}).json()["token"]
        facts = {"machine_id": hostname, "hostname": hostname}
        r = httpx.post(
            self.url + API + "/agent/enroll", json={"token": token, "facts": facts}, timeout=60
        )
        assert r.status_code == 201, r.text
        doc = r.json()
        client = self.client(doc["credential"])
        cvd_id = client.post("/agent/config", json={"state": "idle"}).json()["cvd_id"]
        return Device(client, bytes.fromhex(doc["chunking"]["id_key"]), cvd_id)

    def enrolled_agent(self, folder: Path, hostname: str) -> tuple[Path, Path]:
        """An agent enrolled by ``lamina.agent.enrollment.enroll`` under the policy "std":
        its root ``folder/root`` (``etc/hostname`` only) and its state ``folder/state``."""
        from lamina.agent.enrollment import enroll

        admin = self.login()
        if admin.get("/policies/std").status_code == 404:
            assert admin.post("/policies", json={"name": "std"}).status_code == 201
        token = admin.post("/tokens", json={"expires_in": 3600, "policy": "std"}).json()["token"]
        root, state = folder / "root", folder / "state"
        (root / "etc").mkdir(parents=True)
        (root / "etc/hostname").write_text(f"{hostname}\n")
        enroll(self.url, token, root, state)
        return root, state

    def audit(self) -> list[dict[str, object]]:
        r = self.login().get("/audit")
        assert r.status_code == 200, r.text
        return list(r.json())


def serve(settings: ServerSettings, app: FastAPI | None = None) -> Iterator[str]:
    """Serve ``app`` (``create_app(settings)`` by default) from a thread; yields its URL
    until the test ends."""
    server = uvicorn.Server(
        uvicorn.Config(
            app if app is not None else create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield f"http://{settings.host}:{settings.port}"
    finally:
        server.should_exit = True
        thread.join()


L = TypeVar("L", bound="Live")


def serve_live(settings: ServerSettings, kind: type[L]) -> Iterator[L]:
    """``serve`` as a ``kind`` (``Live`` or a subclass), its clients closed at the end."""
    for url in serve(settings):
        srv = kind(url, settings.data)
        try:
            yield srv
        finally:
            for c in srv.clients:
                c.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    settings = ServerSettings(
        data=tmp_path / "data", port=free_port(), admin_password=ADMIN_PASSWORD
    )
    yield from serve_live(settings, Live)


@dataclass
class Shape:
    """A running server and how to reach its store and database directly."""

    live: Live
    db_url: str
    store_args: list[str]
    in_process: bool = True


def run_gc(shape: Shape, how: str, dry_run: bool = False) -> dict[str, Any]:
    """A gc of the server's store: as a server task (``/store/gc``) or by ``lamina store gc``
    beside the running server, as an admin would run either."""
    if how == "api":
        admin = shape.live.login()
        r = admin.post("/store/gc", json={"dry_run": dry_run, "orphan_grace": 3600})
        assert r.status_code == 202, r.text
        tid = r.json()["id"]
        if shape.in_process:
            store_ops.wait(tid)
        else:
            wait_for(
                "the gc task",
                lambda: admin.get(f"/tasks/{tid}").json()["state"] not in ("queued", "running"),
            )
        task = admin.get(f"/tasks/{tid}").json()
        assert task["state"] == "done", task
        return dict(task["result"])
    args = ["store", "gc", *shape.store_args, "--json"] + (["--dry-run"] if dry_run else [])
    p = subprocess.run(
        [sys.executable, "-m", "lamina.cli", *args], capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout))


@pytest.fixture
def embedded(live: Live) -> Shape:
    return Shape(live, f"sqlite:///{live.data / 'lamina.db'}", ["--data", str(live.data)])
