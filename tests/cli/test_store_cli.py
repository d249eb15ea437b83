"""The store and snapshot commands end to end, on the embedded default (SQLite + folder)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.conftest import Cli
from tests.cli.corpus import describe, make_tree


def test_backup_restore_round_trip_and_dedup(
    cli_factory: Callable[..., Cli], tmp_path: Path
) -> None:
    cli = cli_factory()
    init = cli.json("store", "init")
    assert (cli.data / "keys.json").stat().st_mode & 0o777 == 0o600
    assert init["id"]
    src = make_tree(tmp_path / "src")
    first = cli.json("snapshot", "create", str(src))
    assert first["files_read"] == first["files"] > 300
    again = cli.json("snapshot", "create", str(src))
    assert again["files_read"] == 0 and again["new_bytes"] < 10_000  # trees only
    # ~1% change: one file edited, one added, one removed.
    edited = sorted((src / "etc/app").glob("file*.txt"))[0]
    removed = sorted((src / "usr/share/doc/pkg").glob("file*.txt"))[0]
    edited.write_text("edited")
    (src / "var/log/new.log").write_text("new")
    removed.unlink()
    third = cli.json("snapshot", "create", str(src))
    assert third["files_read"] == 2
    snaps = cli.json("snapshot", "list")
    assert [s["id"] for s in snaps] == [first["id"], again["id"], third["id"]]
    changes = {
        c["path"]: c["change"] for c in cli.json("snapshot", "diff", first["id"], third["id"])
    }
    assert changes[str(edited.relative_to(src))] == "modified"
    assert changes["var/log/new.log"] == "added"
    assert changes[str(removed.relative_to(src))] == "removed"
    assert len(changes) == 3 + 2  # and the two folders whose mtime moved
    out = tmp_path / "out"
    cli.run(
        "snapshot",
        "restore",
        third["id"][:10],
        "--output",
        str(out),
        "--special-files",
        "--same-owner",
    )
    assert describe(out) == describe(src)
    old = tmp_path / "old"
    cli.run(
        "snapshot",
        "restore",
        first["id"],
        "--output",
        str(old),
        "--special-files",
        "--same-owner",
        "--path",
        "etc/app",
    )
    assert (old / edited.relative_to(src)).read_text() != "edited"
    assert not (old / "usr").exists()
    stats = cli.json("store", "stats")
    assert stats["snapshots"] == 3
    # Dedup: three snapshots of ~6 MiB of mostly random data store it about once.
    assert stats["pack_bytes"] < 1.3 * sum(
        f.stat().st_size for f in src.rglob("*") if f.is_file() and not f.is_symlink()
    )
    chk = cli.run("store", "check", "--read-data")
    assert "no errors" in chk.stdout


def test_second_similar_tree_dedups(cli_factory: Callable[..., Cli], tmp_path: Path) -> None:
    cli = cli_factory()
    cli.run("store", "init")
    a = make_tree(tmp_path / "a", seed=1)
    b = make_tree(tmp_path / "b", seed=1)
    (b / "home/alice/Documents/report.bin").write_bytes(os.urandom(1024 * 1024))
    cli.run("snapshot", "create", str(a), "--source", "endpoint-a")
    before = cli.json("store", "stats")["pack_bytes"]
    second = cli.json("snapshot", "create", str(b), "--source", "endpoint-b")
    assert second["files_read"] == second["files"]  # another endpoint: everything read...
    grown = cli.json("store", "stats")["pack_bytes"] - before
    assert grown < 1.2 * 1024 * 1024  # ...but only the changed file is stored


def test_a_first_backup_off_a_terminal_walks_the_tree_once(
    cli_factory: Callable[..., Cli], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The progress total (a walk of the metadata) is only worked out when it is shown:
    # on a terminal, or in a log's first line (never, for a backup done within 10 s).
    import lamina.cli.snapshot_create

    walks: list[Path] = []
    real = lamina.cli.snapshot_create.estimate
    monkeypatch.setattr(
        lamina.cli.snapshot_create,
        "estimate",
        lambda root, *a: walks.append(root) or real(root, *a),
    )
    cli = cli_factory(process=False)
    cli.run("store", "init")
    a = make_tree(tmp_path / "a", seed=1)
    first = cli.json("snapshot", "create", str(a), "--source", "endpoint-a")
    assert first["files_read"] == first["files"] > 0
    assert walks == []


def test_errors_are_one_line_with_exit_codes(
    cli_factory: Callable[..., Cli], tmp_path: Path
) -> None:
    cli = cli_factory()
    p = cli.run("store", "stats", ok=False)
    assert p.returncode == 3 and p.stderr.startswith("error: no key file")
    assert len(p.stderr.strip().splitlines()) == 1
    first = cli.json("store", "init")
    keys = (cli.data / "keys.json").read_bytes()
    # init again (another server joining with the same key file) is harmless: same store.
    assert cli.json("store", "init")["id"] == first["id"]
    assert (cli.data / "keys.json").read_bytes() == keys
    p = cli.run("snapshot", "restore", "zzzz", "--output", str(tmp_path / "o"), ok=False)
    assert p.returncode == 2 and "hex" in p.stderr
    p = cli.run("snapshot", "restore", "abcdef", "--output", str(tmp_path / "o"), ok=False)
    assert p.returncode == 3
    other = cli_factory(name="other")
    other.run("store", "init")
    p = cli.run("store", "check", "--keyfile", str(other.data / "keys.json"), ok=False)
    assert p.returncode == 6 and "key file" in p.stderr


def test_sealed_key_file(cli_factory: Callable[..., Cli], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LAMINA_STORE_PASSPHRASE"}
    cli = cli_factory(env=env)
    cli.env = env
    cli.run("store", "init", "--passphrase-stdin", input="s3cret\n")
    p = cli.run("store", "stats", ok=False)
    assert p.returncode == 6 and "LAMINA_STORE_PASSPHRASE" in p.stderr
    cli.env = {**env, "LAMINA_STORE_PASSPHRASE": "s3cret"}
    cli.run("store", "stats")


@pytest.mark.e2e
def test_kill_during_backup_then_check_clean_and_next_backup_completes(
    cli_factory: Callable[..., Cli], tmp_path: Path
) -> None:
    cli = cli_factory(env={"LAMINA_PACK_SIZE": str(256 * 1024)})
    cli.run("store", "init")
    src = make_tree(tmp_path / "src", small=2000, large_mb=48)
    proc = subprocess.Popen(
        cli.args("snapshot", "create", str(src)),
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    packs = cli.data / "store" / "packs"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if packs.exists() and sum(1 for _ in packs.rglob("*")) > 20:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the backup finished before it could be killed"
    assert cli.json("snapshot", "list") == []
    chk = cli.run("store", "check", "--read-data")
    assert "no errors" in chk.stdout
    done = cli.json("snapshot", "create", str(src))
    assert done["files"] == done["files_read"]
    out = tmp_path / "out"
    cli.run(
        "snapshot", "restore", "latest", "--output", str(out), "--special-files", "--same-owner"
    )
    assert describe(out) == describe(src)
    cli.run("store", "gc", "--orphan-grace", "0s")
    chk = cli.run("store", "check", "--read-data")
    assert "no errors" in chk.stdout and "warning" not in chk.stderr


def test_serverless_commands_refuse_a_store_a_server_manages(
    cli_factory: Callable[..., Cli], tmp_path: Path
) -> None:
    """`lamina snapshot create/forget` leave a server's store alone unless --force,
    and say why; reading it (list, check) is fine."""
    from lamina.config import ServerSettings
    from lamina.server.app import open_context

    cli = cli_factory()
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    cli.run("store", "init")
    first = cli.json("snapshot", "create", str(src))  # no server yet: allowed
    ctx, _ = open_context(ServerSettings(data=cli.data, admin_password="pw-for-the-test"))
    ctx.engine.dispose()
    refused = cli.run("snapshot", "create", str(src), ok=False)
    assert refused.returncode == 2
    assert "managed by a Lamina server" in refused.stderr
    assert "--force" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert cli.run("snapshot", "forget", first["id"], ok=False).returncode == 2
    assert [s["id"] for s in cli.json("snapshot", "list")] == [first["id"]]
    forced = cli.json("snapshot", "create", str(src), "--force")
    assert [s["id"] for s in cli.json("snapshot", "list")] == [first["id"], forced["id"]]


def test_snapshot_ls_lists_a_folder_and_refuses_a_file_or_a_missing_path(
    cli_factory: Callable[..., Cli], tmp_path: Path
) -> None:
    cli = cli_factory()
    cli.run("store", "init")
    src = tmp_path / "src"
    (src / "etc" / "app").mkdir(parents=True)
    (src / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    snap = cli.json("snapshot", "create", str(src))["id"]
    assert [e["name"] for e in cli.json("snapshot", "ls", snap)] == ["etc"]
    assert sorted(e["name"] for e in cli.json("snapshot", "ls", snap, "/etc")) == ["app", "hosts"]
    assert cli.json("snapshot", "ls", snap, "etc/app") == []
    for path in ("etc/hosts", "nope", "etc/nope/deeper"):
        p = cli.run("snapshot", "ls", snap, path, ok=False)
        assert p.returncode == 3 and f"{path} is not a folder in snapshot" in p.stderr, p.stderr
