"""Capture layers from reference snapshots: a base layer filters a snapshot; an app layer
is the difference between two snapshots, deletions kept as whiteouts."""

from __future__ import annotations

from dataclasses import dataclass, field

from lamina.layers.merge import DPKG_STATUS, installed, parse_dpkg_status
from lamina.layers.rules import RuleSet
from lamina.store.blob import BlobKind
from lamina.tree.diff import ADDED, METADATA, MODIFIED, REMOVED, diff_trees
from lamina.tree.model import Entry, encode_tree
from lamina.tree.paths import Load, Put, filter_tree, index, read_file, remembering


@dataclass
class Captured:
    root: bytes
    whiteouts: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    apps: dict[str, object] = field(default_factory=dict)
    dropped: int = 0


def _empty(put: Put) -> bytes:
    return put(BlobKind.TREE, encode_tree([]))


def applications(
    load: Load, entries: dict[str, Entry], before: dict[str, Entry] | None = None
) -> dict[str, object]:
    """Packages (dpkg) and desktop applications a layer holds (new ones, for an app layer)."""
    pkgs: dict[str, str] = {}
    st = entries.get(DPKG_STATUS)
    if st is not None and st.type == "file":
        pkgs = installed(parse_dpkg_status(read_file(load, st)))
        if before is not None and before.get(DPKG_STATUS) is not None:
            old = installed(parse_dpkg_status(read_file(load, before[DPKG_STATUS])))
            pkgs = {k: v for k, v in pkgs.items() if old.get(k) != v}
    desktop = []
    for path, e in sorted(entries.items()):
        if (
            path.startswith("/usr/share/applications/")
            and path.endswith(".desktop")
            and e.type == "file"
        ):
            name = path.rsplit("/", 1)[1][: -len(".desktop")]
            for line in read_file(load, e).decode(errors="replace").splitlines():
                if line.startswith("Name="):
                    name = line[5:].strip()
                    break
            desktop.append(name)
    return {"packages": pkgs, "desktop": desktop}


def capture_base(load: Load, put: Put, snapshot_root: bytes, rules: RuleSet) -> Captured:
    load, put = remembering(load, put)
    dropped = 0

    def keep(path: str, e: Entry) -> bool:
        nonlocal dropped
        ok = rules.capturable(path)
        dropped += not ok and e.type != "dir"
        return ok

    root = filter_tree(load, put, snapshot_root, keep) or _empty(put)
    entries = index(load, root)
    files = [e for e in entries.values() if e.type != "dir"]
    return Captured(
        root=root,
        files=len(files),
        bytes=sum(e.size for e in files),
        apps=applications(load, entries),
        dropped=dropped,
    )


def capture_app(
    load: Load, put: Put, start_root: bytes, end_root: bytes, rules: RuleSet
) -> Captured:
    load, put = remembering(load, put)
    changed: set[str] = set()
    whiteouts: list[str] = []
    for ch in diff_trees(load, start_root, end_root):
        path = "/" + ch.path.decode(errors="surrogateescape")
        if not rules.capturable(path):
            continue
        if ch.kind == REMOVED:
            whiteouts.append(path)
        elif ch.kind in (ADDED, MODIFIED, METADATA):
            changed.add(path)
    # A removed folder's content is removed with it: keep only the top whiteout.
    whiteouts = [
        w for w in sorted(whiteouts) if not any(w.startswith(o + "/") for o in whiteouts if o != w)
    ]
    root = filter_tree(load, put, end_root, lambda p, _e: p in changed) or _empty(put)
    entries = index(load, root)
    files = [e for e in entries.values() if e.type != "dir"]
    return Captured(
        root=root,
        whiteouts=whiteouts,
        files=len(files),
        bytes=sum(e.size for e in files),
        apps=applications(load, entries, index(load, start_root)),
    )
