"""Make tests/data/test-store-v1.tar.gz and its manifest: a small store, made ONCE.

The tarball is committed and never regenerated for a format that exists: tests check
that today's code opens it, checks it, restores it exactly and rebuilds its index
(tests/store/test_frozen_store.py), as restic keeps testdata/test-repo.tar.gz and borg
repo12.tar.gz. A new format version gets a new tarball (test-store-v2) beside this one.

    .venv/bin/python -m tests.data.make_test_store
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from lamina.db.stores import StoreLocation, init_store
from lamina.store.keys import KEYFILE_NAME, StoreKeys, write_keyfile
from lamina.tree.backup import backup

HERE = Path(__file__).parent
TARBALL = HERE / "test-store-v1.tar.gz"
MANIFEST = HERE / "test-store-v1.manifest.json"


def _source(root: Path, version: int) -> None:
    """A small tree with what a format must carry: modes, a symlink, an empty file,
    a nested folder, a file of several chunks, a name that is not UTF-8."""
    (root / "etc" / "app").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc" / "app" / "app.conf").write_text(f"version = {version}\n")
    os.chmod(root / "etc" / "app" / "app.conf", 0o640)
    (root / "empty").write_bytes(b"")
    tool = root / "bin" / "tool"
    tool.parent.mkdir(exist_ok=True)
    tool.write_text("#!/bin/sh\necho tool\n")
    os.chmod(tool, 0o755)
    if not (root / "bin" / "link").is_symlink():
        (root / "bin" / "link").symlink_to("tool")
    # Several chunks (the key file sets 1-4-16 KiB chunks): about 60 KiB of text lines.
    lines = (f"{i:08d} {hashlib.sha256(str(i).encode()).hexdigest()[:20]}\n" for i in range(2_000))
    (root / "big.log").write_text("".join(lines))
    (root / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name\n")
    if version == 2:
        (root / "added.txt").write_text("only in the second snapshot\n")
    for p in [root, *root.rglob("*")]:
        os.utime(
            p, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000), follow_symlinks=False
        )


def manifest(root: Path) -> dict[str, list[Any]]:
    """path -> [type, mode, size, sha256 | link target] for everything below ``root``."""
    out: dict[str, list[Any]] = {}
    for p in sorted(root.rglob("*")):
        rel = os.fsencode(p.relative_to(root)).decode(errors="surrogateescape")
        st = p.lstat()
        mode = st.st_mode & 0o7777
        if p.is_symlink():
            out[rel] = ["symlink", 0, 0, os.readlink(p)]
        elif p.is_dir():
            out[rel] = ["dir", mode, 0, ""]
        else:
            out[rel] = ["file", mode, st.st_size, hashlib.sha256(p.read_bytes()).hexdigest()]
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, data = Path(tmp) / "src", Path(tmp) / "store"
        src.mkdir()
        keys = StoreKeys.generate(min_size=1024, avg_size=4096, max_size=16384)
        store = init_store(StoreLocation(data=data), keys=keys)
        write_keyfile(data / KEYFILE_NAME, keys)
        store.pack_size = 32 * 1024
        snaps = []
        for version in (1, 2):
            _source(src, version)
            res = backup(store, src, source="test-host:/src", meta={"v": version})
            snaps.append({"id": res.snapshot.id, "files": manifest(src)})
        store.close()
        with tarfile.open(TARBALL, "w:gz") as tar:
            tar.add(data, arcname="store")
    doc = {"format": "lamina store v1 (key file 1, pack 1, blob 1, tree 1, snapshot 1)"}
    MANIFEST.write_text(json.dumps({**doc, "snapshots": snaps}, indent=1, ensure_ascii=True) + "\n")
    print(f"wrote {TARBALL} ({TARBALL.stat().st_size} bytes) and {MANIFEST}")


if __name__ == "__main__":
    main()
