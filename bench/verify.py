"""Checking a restore: a manifest of a tree (types, contents, metadata, hard links) and a comparison."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Manifest:
    entries: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # rel -> (type, ...)
    meta: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # mode uid gid mtime
    links: dict[tuple[int, int], list[str]] = field(default_factory=dict)  # hard-link groups


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


def manifest(root: Path) -> Manifest:
    m = Manifest()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                m.entries[rel] = ("dir",)
            elif stat.S_ISLNK(st.st_mode):
                m.entries[rel] = ("symlink", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                m.entries[rel] = ("file", st.st_size, _digest(p))
                if st.st_nlink > 1:
                    m.links.setdefault((st.st_dev, st.st_ino), []).append(rel)
            else:
                m.entries[rel] = ("other", stat.S_IFMT(st.st_mode))
            mode = stat.S_IMODE(st.st_mode) if not stat.S_ISLNK(st.st_mode) else 0
            m.meta[rel] = (mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return m


@dataclass
class Verdict:
    content: list[str] = field(default_factory=list)  # missing, extra, different bytes or type
    metadata: list[str] = field(default_factory=list)  # mode, owner, mtime, hard links

    @property
    def ok(self) -> bool:
        return not self.content and not self.metadata

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "content_differences": len(self.content),
            "metadata_differences": len(self.metadata),
            "examples": (self.content + self.metadata)[:20],
        }


def compare(expected: Manifest, got: Manifest, *, owners: bool) -> Verdict:
    v = Verdict()
    for rel, want in expected.entries.items():
        have = got.entries.get(rel)
        if have is None:
            v.content.append(f"missing: {rel}")
        elif have != want:
            v.content.append(f"differs: {rel}: expected {want[:2]}, got {have[:2]}")
    for rel in got.entries.keys() - expected.entries.keys():
        v.content.append(f"extra: {rel}")
    for rel, (mode, uid, gid, mtime) in expected.meta.items():
        have_meta = got.meta.get(rel)
        if have_meta is None or rel not in got.entries:
            continue
        gmode, guid, ggid, gmtime = have_meta
        if mode != gmode:
            v.metadata.append(f"mode: {rel}: {oct(mode)} != {oct(gmode)}")
        if owners and (uid, gid) != (guid, ggid):
            v.metadata.append(f"owner: {rel}: {uid}:{gid} != {guid}:{ggid}")
        if mtime != gmtime:
            v.metadata.append(f"mtime: {rel}: {mtime} != {gmtime}")
    got_group = {rel: key for key, rels in got.links.items() for rel in rels}
    for rels in expected.links.values():
        keys = {got_group.get(r) for r in rels if r in got.entries}
        if len(keys) > 1 or None in keys:
            v.metadata.append(f"hard links not preserved: {', '.join(sorted(rels)[:3])} ...")
    return v
