"""The store and snapshot commands end to end on the scale-out set-up: PostgreSQL + S3.

The same scenarios as ``test_store_cli.py`` (embedded SQLite + folder), run through the
real ``lamina`` command against a real PostgreSQL database and a real S3 bucket
(SeaweedFS), and checked from behind: the bucket is listed and damaged with boto3,
the database is dropped with SQL.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from lamina.db.models import blobs as blobs_table
from lamina.db.models import snapshots as snapshots_table
from lamina.errors import IntegrityError
from lamina.store.blob import BlobKind
from tests.cli.conftest import Cli
from tests.cli.corpus import describe, make_tree
from tests.conftest import PostgresServer, S3Server

pytestmark = pytest.mark.e2e

PREFIX = "store"  # the key prefix S3Server.url gives the store


@pytest.fixture
def scaleout(cli_factory: Callable[..., Cli], pg_db_url: str, s3_url: str) -> Callable[..., Cli]:
    """A ``Cli`` on PostgreSQL + S3 (``db`` picks another database for the same bucket)."""

    def make(db: str = pg_db_url, env: dict[str, str] | None = None) -> Cli:
        return cli_factory(extra=["--db", db, "--store", s3_url], env=env)

    return make


@pytest.fixture
def second_db(postgres_server: PostgresServer) -> Iterator[str]:
    """Another fresh, empty database on the same server (as ``pg_db_url`` makes them)."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


def bucket_objects(s3: S3Server, bucket: str, prefix: str = f"{PREFIX}/") -> dict[str, int]:
    """Every key (and its size) under ``prefix``, listed straight from S3."""
    client = s3.client()
    try:
        out: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                out[item["Key"]] = item["Size"]
        return out
    finally:
        client.close()


def pack_objects(s3: S3Server, bucket: str) -> dict[str, int]:
    """Pack objects (``store/packs/xx/<64 hex>``) keyed by pack name."""
    return {
        key.rsplit("/", 1)[-1]: size
        for key, size in bucket_objects(s3, bucket, f"{PREFIX}/packs/").items()
    }


def tree_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())


def db_snapshot_count(db_url: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            return int(c.execute(select(func.count()).select_from(snapshots_table)).scalar_one())
    finally:
        engine.dispose()


def small_change(src: Path) -> tuple[Path, Path]:
    """~1% of the tree: one file edited, one added, one removed."""
    edited = sorted((src / "etc/app").glob("file*.txt"))[0]
    removed = sorted((src / "usr/share/doc/pkg").glob("file*.txt"))[0]
    edited.write_text("edited")
    (src / "var/log/new.log").write_text("new")
    removed.unlink()
    return edited, removed


def live_snapshot_objects(db_url: str) -> int:
    """Uncondemned snapshot objects (blob kind SNAPSHOT) the index knows."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            q = (
                select(func.count())
                .select_from(blobs_table)
                .where(blobs_table.c.kind == int(BlobKind.SNAPSHOT))
                .where(blobs_table.c.condemned.is_(False))
            )
            return int(c.execute(q).scalar_one())
    finally:
        engine.dispose()


def assert_stats_match_bucket(stats: dict[str, Any], s3: S3Server, bucket: str) -> None:
    """The index and the bucket agree: one row per pack object, same bytes."""
    on_s3 = pack_objects(s3, bucket)
    assert stats["packs"] == len(on_s3)
    assert stats["pack_bytes"] == sum(on_s3.values())
    assert 0 < stats["stored_bytes"] < stats["pack_bytes"]  # pack headers and footers on top
    assert stats["raw_bytes"] > 0
    # Whatever is not data or a tree is a snapshot object, one per snapshot at least.
    assert stats["blobs"] - stats["data_blobs"] - stats["tree_blobs"] >= stats["snapshots"]


def assert_check_clean(cli: Cli) -> None:
    chk = cli.run("store", "check", "--read-data")
    assert "no errors" in chk.stdout, chk.stdout + chk.stderr
    assert "warning" not in chk.stderr, chk.stderr


def test_round_trip_on_postgres_and_s3(
    scaleout: Callable[..., Cli],
    pg_db_url: str,
    s3_server: S3Server,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    cli = scaleout()
    init = cli.json("store", "init")
    assert init["store"].startswith(f"s3://{s3_bucket}/{PREFIX}")
    assert "secret_key" not in init["store"]  # credentials stay out of what is printed
    assert f"{PREFIX}/config" in bucket_objects(s3_server, s3_bucket)
    src = make_tree(tmp_path / "src")
    first = cli.json("snapshot", "create", str(src))
    assert first["files_read"] == first["files"] > 300
    assert first["errors"] == []
    again = cli.json("snapshot", "create", str(src))
    assert again["files_read"] == 0 and again["new_bytes"] < 10_000  # trees only
    edited, removed = small_change(src)
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

    out = tmp_path / "out"
    restored = cli.json(
        "snapshot", "restore", "latest", "--output", str(out), "--special-files", "--same-owner"
    )
    assert restored["id"] == third["id"] and restored["errors"] == []
    assert describe(out) == describe(src)

    # Everything lives in PostgreSQL and S3: nothing went to the embedded defaults.
    assert not (cli.data / "lamina.db").exists()
    assert not (cli.data / "store").exists()
    assert db_snapshot_count(pg_db_url) == 3

    assert_check_clean(cli)
    stats = cli.json("store", "stats")
    assert stats["id"] == init["id"]
    assert stats["snapshots"] == 3
    assert_stats_match_bucket(stats, s3_server, s3_bucket)
    assert stats["condemned"] == 0
    assert stats["blobs"] - stats["data_blobs"] - stats["tree_blobs"] == 3
    assert live_snapshot_objects(pg_db_url) == 3
    # Dedup: three snapshots of ~6 MiB of mostly random data store it about once.
    assert stats["pack_bytes"] < 1.3 * tree_bytes(src)
    assert stats["raw_bytes"] >= tree_bytes(src)


def _forget_and_gc(
    cli: Cli, src: Path, s3: S3Server, bucket: str
) -> tuple[
    dict[str, Any], dict[str, Any], dict[str, Any], dict[str, int], dict[str, tuple[object, ...]]
]:
    """Two snapshots, the first alone holding 4 MiB; forget it and collect.

    Whether gc deletes or repacks the packs holding those 4 MiB depends on how the
    backup's reading threads interleaved their blobs in the packs (a pack holding a
    chunk of the big file and a small file's blob is repacked, not deleted): the
    tests assert what every interleaving gives, the bytes freed.

    Returns the forgotten and the kept snapshot, the gc report, the pack objects
    before gc, and what the kept snapshot must restore to.
    """
    big = src / "usr/lib/x86_64/libbig.so"
    old = cli.json("snapshot", "create", str(src))
    big.unlink()  # only the old snapshot holds these 4 MiB
    kept = cli.json("snapshot", "create", str(src))
    kept_tree = describe(src)
    before = pack_objects(s3, bucket)
    assert cli.run("snapshot", "forget", old["id"][:12]).stdout.strip() == "forgot 1 snapshots"
    rep = cli.json("store", "gc", "--orphan-grace", "0s")
    return old, kept, rep, before, kept_tree


def test_forget_and_gc_free_space_on_s3(
    scaleout: Callable[..., Cli],
    pg_db_url: str,
    s3_server: S3Server,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    # Small packs, so the forgotten snapshot's data fills packs of its own.
    cli = scaleout(env={"LAMINA_PACK_SIZE": str(256 * 1024)})
    cli.run("store", "init")
    src = make_tree(tmp_path / "src")
    big_size = (src / "usr/lib/x86_64/libbig.so").stat().st_size

    # A dry run first, while both snapshots are kept: nothing to do, nothing touched.
    cli.json("snapshot", "create", str(src), "--source", "warm-up")
    dry = cli.json("store", "gc", "--dry-run", "--orphan-grace", "0s")
    assert dry["dry_run"] is True and dry["condemned"] == 0 and dry["packs_deleted"] == 0
    cli.run("snapshot", "forget", cli.json("snapshot", "list")[0]["id"])

    old, kept, rep, before, kept_tree = _forget_and_gc(cli, src, s3_server, s3_bucket)
    assert [s["id"] for s in cli.json("snapshot", "list")] == [kept["id"]]
    assert rep["condemned"] > 0 and rep["packs_deleted"] + rep["packs_repacked"] > 0
    assert rep["bytes_freed"] >= 0.9 * big_size

    # The objects really went away from the bucket.
    after = pack_objects(s3_server, s3_bucket)
    gone = set(before) - set(after)
    written = {p: size for p, size in after.items() if p not in before}  # by repacking
    assert gone, "gc deleted no pack object from the bucket"
    assert rep["packs_deleted"] + rep["packs_repacked"] >= len(gone) >= rep["packs_deleted"]
    assert sum(after.values()) <= sum(before.values()) - 0.9 * big_size
    assert sum(before[p] for p in gone) - sum(written.values()) >= 0.9 * big_size
    # The index and the bucket agree afterwards: no dangling rows, no stray objects.
    stats = cli.json("store", "stats")
    assert stats["snapshots"] == 1
    assert_stats_match_bucket(stats, s3_server, s3_bucket)
    assert live_snapshot_objects(pg_db_url) == 1  # the forgotten one's object is condemned
    assert_check_clean(cli)

    out = tmp_path / "out"
    cli.run(
        "snapshot", "restore", kept["id"], "--output", str(out), "--special-files", "--same-owner"
    )
    assert describe(out) == kept_tree
    p = cli.run("snapshot", "restore", old["id"], "--output", str(tmp_path / "gone"), ok=False)
    assert p.returncode == 3  # NotFoundError: the forgotten snapshot is gone for good

    # A second gc frees nothing more (condemned rows left in packs too full to repack stay).
    rep2 = cli.json("store", "gc", "--orphan-grace", "0s")
    assert rep2["packs_deleted"] == rep2["packs_repacked"] == rep2["bytes_freed"] == 0
    assert pack_objects(s3_server, s3_bucket) == after
    assert_check_clean(cli)


def test_rebuild_index_after_gc_does_not_resurrect_forgotten_snapshots(
    scaleout: Callable[..., Cli],
    pg_db_url: str,
    s3_server: S3Server,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    cli = scaleout(env={"LAMINA_PACK_SIZE": str(256 * 1024)})
    cli.run("store", "init")
    src = make_tree(tmp_path / "src")
    big_size = (src / "usr/lib/x86_64/libbig.so").stat().st_size
    old, kept, rep, _, _ = _forget_and_gc(cli, src, s3_server, s3_bucket)
    # Its packs went, deleted or repacked (see ``_forget_and_gc``).
    assert rep["packs_deleted"] + rep["packs_repacked"] > 0
    assert rep["bytes_freed"] >= 0.9 * big_size
    _drop_everything(pg_db_url)
    rebuilt = cli.json("store", "rebuild-index")
    ids = [s["id"] for s in cli.json("snapshot", "list")]
    assert old["id"] not in ids, rebuilt  # now it is back, and its 4 MiB are not
    assert ids == [kept["id"]]
    assert_check_clean(cli)


def _drop_everything(db_url: str) -> None:
    """The database is lost: every table (alembic_version too) goes."""
    engine = create_engine(db_url)
    try:
        with engine.begin() as c:
            c.execute(text("DROP SCHEMA public CASCADE"))
            c.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


def test_rebuild_index_after_database_loss(
    scaleout: Callable[..., Cli],
    pg_db_url: str,
    second_db: str,
    s3_server: S3Server,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    cli = scaleout()
    cli.run("store", "init")
    src = make_tree(tmp_path / "src")
    first = cli.json("snapshot", "create", str(src), "--source", "endpoint-a")
    first_tree = describe(src)
    small_change(src)
    second = cli.json("snapshot", "create", str(src), "--source", "endpoint-a")
    second_tree = describe(src)
    listed = cli.json("snapshot", "list")
    stats = cli.json("store", "stats")

    def assert_recovered(c: Cli, tag: str) -> None:
        rep = c.json("store", "rebuild-index")
        assert rep["skipped"] == []
        assert rep["snapshots_recovered"] == 2
        assert rep["packs"] == stats["packs"] and rep["blobs"] == stats["blobs"]
        relisted = c.json("snapshot", "list")
        assert [s["id"] for s in relisted] == [first["id"], second["id"]]
        for a, b in zip(relisted, listed, strict=True):
            assert {**a, "time": None} == {**b, "time": None}
            assert _instant(a["time"]) == _instant(b["time"])
        restats = c.json("store", "stats")
        assert restats == stats
        for snap, tree in ((first, first_tree), (second, second_tree)):
            out = tmp_path / f"{tag}-{snap['id'][:8]}"
            c.run(
                "snapshot",
                "restore",
                snap["id"],
                "--output",
                str(out),
                "--special-files",
                "--same-owner",
            )
            assert describe(out) == tree
        assert_check_clean(c)
        # The recovered index is a working one: the next backup dedups against it.
        nxt = c.json("snapshot", "create", str(src), "--source", "endpoint-b")
        assert nxt["new_bytes"] < 10_000

    # 1. Every table dropped: the next command recreates an empty schema...
    _drop_everything(pg_db_url)
    assert cli.json("snapshot", "list") == []
    assert cli.json("store", "stats")["packs"] == 0
    # ...and rebuild-index brings the snapshots back from the packs alone.
    assert_recovered(cli, "dropped")

    # 2. Another, brand-new database pointed at the same bucket and key file.
    fresh = scaleout(db=second_db)  # the same --data, so the same key file
    assert fresh.data == cli.data
    # (the snapshot of endpoint-b written in step 1 is in the bucket too)
    rep = fresh.json("store", "rebuild-index")
    assert rep["snapshots_recovered"] == 3 and rep["skipped"] == []
    ids = [s["id"] for s in fresh.json("snapshot", "list")]
    assert ids[:2] == [first["id"], second["id"]] and len(ids) == 3
    out = tmp_path / "fresh-latest"
    fresh.run(
        "snapshot", "restore", "latest", "--output", str(out), "--special-files", "--same-owner"
    )
    assert describe(out) == second_tree
    assert_check_clean(fresh)


def _instant(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def damage_biggest_pack(s3: S3Server, bucket: str) -> str:
    """Flip 16 bytes in the middle of the biggest pack object (same size); its name."""
    packs = pack_objects(s3, bucket)
    victim = max(packs, key=lambda name: packs[name])
    key = f"{PREFIX}/packs/{victim[:2]}/{victim}"
    client = s3.client()
    try:
        data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        middle = len(data) // 2
        data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
        client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    finally:
        client.close()
    assert pack_objects(s3, bucket)[victim] == packs[victim]  # only bytes flipped
    return victim


def test_damaged_pack_on_s3_is_named_by_check(
    scaleout: Callable[..., Cli], s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    cli = scaleout()
    cli.run("store", "init")
    src = make_tree(tmp_path / "src")
    cli.run("snapshot", "create", str(src))
    assert_check_clean(cli)
    victim = damage_biggest_pack(s3_server, s3_bucket)

    # Same size, so only reading the data can tell.
    p = cli.run("store", "check", "--read-data", ok=False)
    assert victim[:16] in p.stderr, p.stdout + p.stderr
    assert "errors" in p.stdout and "no errors" not in p.stdout
    assert "content does not match its name" in p.stderr
    p = cli.run("store", "check", "--read-data", "--json", ok=False)
    doc = json.loads(p.stdout)
    assert doc["ok"] is False and doc["errors"]
    assert any(e.startswith(f"pack {victim[:16]}") for e in doc["errors"])
    assert all(victim[:16] in e for e in doc["errors"]), doc["errors"]  # no other pack blamed

    # Restoring from the damaged pack does not pass wrong bytes off as the file.
    out = tmp_path / "out"
    p = cli.run("snapshot", "restore", "latest", "--output", str(out), ok=False)
    assert p.returncode == IntegrityError.exit_code, p.stdout + p.stderr
    assert "fails authentication" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    # Whatever was restored before the failure is right; no half-written file is left.
    restored = [f for f in out.rglob("*") if f.is_file() and not f.is_symlink()]
    assert not [f for f in restored if f.name.startswith(".lamina-restore-")]
    for f in restored:
        assert f.read_bytes() == (src / f.relative_to(out)).read_bytes(), f


def test_check_exits_non_zero_on_a_damaged_pack(
    scaleout: Callable[..., Cli], s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    cli = scaleout()
    cli.run("store", "init")
    src = make_tree(tmp_path / "src", small=20, large_mb=1)
    cli.run("snapshot", "create", str(src))
    damage_biggest_pack(s3_server, s3_bucket)
    p = cli.run("store", "check", "--read-data", ok=False)
    assert "damaged" in p.stderr
    assert p.returncode == IntegrityError.exit_code, p.stdout + p.stderr
    p = cli.run("store", "check", "--read-data", "--json", ok=False)
    assert p.returncode == IntegrityError.exit_code


def test_database_of_another_store_is_refused(
    scaleout: Callable[..., Cli], pg_db_url: str, tmp_path: Path
) -> None:
    """A new key file (another store) pointed at a bound database is refused, in one line."""
    cli = scaleout()
    cli.run("store", "init")
    other = Cli(tmp_path / "other-data", cli.extra, {})
    p = other.run("store", "init", ok=False)  # a new key file meets the bound database
    assert p.returncode == 6 and "key file" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert os.path.exists(cli.data / "keys.json")
    assert make_url(pg_db_url).get_backend_name() == "postgresql"
