"""A flex image's snapshot no version names goes at the next gc once a day old: what a
registration stopped between its snapshot and its version row (or a deletion between
its rows and its ``forget``) left behind kept the disk's data for ever, a root nobody
lists (the crash audit's S5). Registered images' snapshots stay."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from lamina.config import ServerSettings
from lamina.db import roots
from lamina.server.app import open_context
from lamina.server.security import ROLES, Principal
from lamina.server.services import flex_images
from lamina.store.check import check
from lamina.tree.backup import walk_blobs
from lamina.tree.model import references
from tests.server.conftest import ADMIN_PASSWORD, Live, Shape, run_gc
from tests.store.helpers import random_files, snapshot_of


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")
def test_a_stopped_registrations_snapshot_goes_and_a_registered_one_stays(
    embedded: Shape, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live: Live = embedded.live
    ctx, _ = open_context(ServerSettings(data=live.data, admin_password=ADMIN_PASSWORD))
    admin = Principal("user", "admin-id", "admin", "administrator", ROLES["administrator"])
    kept_disk, stray_disk = tmp_path / "kept.raw", tmp_path / "stray.raw"
    kept_disk.write_bytes(random.Random(1).randbytes(300_000))
    stray_disk.write_bytes(random.Random(2).randbytes(300_000))
    work = flex_images.tmp_dir(ctx.settings.data)
    flex_images.register(ctx.engine, ctx.store, admin, "kept", kept_disk, work, 256, 1, "bios")
    # A registration stopped after its snapshot, before its version row.
    stray, _, _ = flex_images.store_raw(ctx.store, "image-that-never-was", stray_disk)
    # A backup someone named "flex:…" (a host called flex, `--source flex:x`): not an image's.
    backup = snapshot_of(ctx.store, random_files(2), "flex:desk-backup")
    ids = {s.id for s in ctx.store.catalog.snapshots()}
    assert {stray.id, backup.id} <= ids and len(ids) == 3

    first = run_gc(embedded, "api")  # a day has not passed: it may be a registration at work
    assert not any(roots.STRAYS in n for n in first["notes"])
    assert {s.id for s in ctx.store.catalog.snapshots()} == ids
    monkeypatch.setattr(roots, "STRAY_FLEX_AGE", roots.dt.timedelta(0))
    dry = run_gc(embedded, "api", dry_run=True)
    assert f"would forget 1 {roots.STRAYS}" in dry["notes"]
    done = run_gc(embedded, "api")
    assert f"forgot 1 {roots.STRAYS}" in done["notes"]
    left = {s.id: s for s in ctx.store.catalog.snapshots()}
    assert stray.id not in left and backup.id in left and len(left) == 2
    [image] = [s for s in left.values() if s.id != backup.id]
    assert image.meta.get("flex_image")
    assert ctx.store.catalog.missing(list(walk_blobs(ctx.store, image.root))) == set()
    assert check(ctx.store, roots.all_roots(ctx.store), references, read_data=True).ok
