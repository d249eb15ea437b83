"""Finding 19: the server's data folder and database are the owner's alone.

The reproduction: ``lamina.db`` (Argon2 hashes, the audit log, device facts,
tree ids) was created 0644 in a 0755 data folder.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.e2e.conftest import ADMIN_PASSWORD, LAMINA, ServerProc


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """The usual umask of a shell (022), whatever the test runner has."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(data: Path) -> dict[str, int]:
    """Permission bits of everything under ``data`` (and ``data`` itself as ".")."""
    found = {".": stat.S_IMODE(data.stat().st_mode)}
    for p in data.rglob("*"):
        found[str(p.relative_to(data))] = stat.S_IMODE(p.lstat().st_mode)
    return found


def assert_owner_only(data: Path) -> None:
    for name, mode in modes(data).items():
        assert mode & 0o077 == 0, f"{name} is {mode:o}"


def test_store_init_makes_the_data_folder_and_database_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    subprocess.run([*LAMINA, "store", "init", "--data", str(data)], check=True, umask=0o022)
    found = modes(data)
    assert found["."] == 0o700 and found["lamina.db"] == 0o600 and found["keys.json"] == 0o600
    assert_owner_only(data)


def test_server_database_wal_and_shm_are_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with umask(0o022):
        server = ServerProc(data, [], seed_database=False).start()
    try:
        # Writes (a login) while the server holds the database open: WAL and SHM exist.
        # A hang guard, not a threshold: a real Argon2 login took over httpx's default 5 s
        # on a loaded 2-core box.
        r = httpx.post(
            server.url + "/api/v1/auth/login",
            json={"user": "admin", "password": ADMIN_PASSWORD},
            timeout=120,
        )
        assert r.status_code == 200
        found = modes(data)
        assert {"lamina.db", "lamina.db-wal", "lamina.db-shm"} <= set(found)
        assert found["."] == 0o700
        assert_owner_only(data)
    finally:
        server.stop()


def test_server_tightens_a_data_folder_left_readable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    subprocess.run([*LAMINA, "store", "init", "--data", str(data)], check=True)
    os.chmod(data, 0o755)  # as an earlier version left it
    os.chmod(data / "lamina.db", 0o644)
    server = ServerProc(data, []).start()
    try:
        found = modes(data)
        assert found["."] == 0o700 and found["lamina.db"] == 0o600
        assert_owner_only(data)
    finally:
        server.stop()
