"""Realistic little trees for end-to-end tests: many small text files, a few large ones."""

from __future__ import annotations

import os
import random
from pathlib import Path


def make_tree(root: Path, *, seed: int = 7, small: int = 300, large_mb: int = 4) -> Path:
    rnd = random.Random(seed)
    words = [f"word{i}" for i in range(500)]
    for d in (
        "etc/app",
        "usr/bin",
        "usr/lib/x86_64",
        "usr/share/doc/pkg",
        "home/alice/Documents",
        "var/log",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    dirs = [p for p in root.rglob("*") if p.is_dir()]
    for i in range(small):
        d = dirs[i % len(dirs)]
        text = " ".join(rnd.choice(words) for _ in range(rnd.randint(5, 800)))
        (d / f"file{i:04d}.txt").write_text(text)
    big = root / "usr/lib/x86_64/libbig.so"
    big.write_bytes(rnd.randbytes(large_mb * 1024 * 1024))
    (root / "home/alice/Documents/report.bin").write_bytes(rnd.randbytes(1024 * 1024 + 123))
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "usr/bin/tool", 0o4755)
    os.symlink("tool", root / "usr/bin/tool-link")
    os.symlink("/etc/passwd", root / "etc/app/abs-link")
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-hard")
    os.chown(root / "home/alice/Documents/report.bin", 1000, 1000)
    os.setxattr(root / "etc/app", "user.lamina.test", b"value")
    (root / "empty-dir").mkdir()
    return root


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a restore must reproduce, per relative path."""
    out: dict[str, tuple[object, ...]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("l", os.readlink(p), st.st_uid, st.st_gid)
        elif p.is_dir():
            xs = tuple(sorted((n, os.getxattr(p, n)) for n in os.listxattr(p)))
            out[rel] = ("d", st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, xs)
        else:
            xs = tuple(sorted((n, os.getxattr(p, n)) for n in os.listxattr(p)))
            out[rel] = (
                "f",
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_mtime_ns,
                st.st_nlink,
                p.read_bytes(),
                xs,
            )
    return out
