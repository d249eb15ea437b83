"""Golden files for ``make_plan``: a case's inputs (JSON) -> the plan it makes (JSON).

A case file in ``tests/layers/golden/`` holds ``inputs`` and ``expected``. Inputs name
files by path; a file is a string (its text, mode 0644) or an object with ``data``,
``mode``, ``uid``, ``type`` ("file", "dir", "symlink") and ``target``. The trees live
in a dict, ids are SHA-256 of kind and bytes, so the plan is the same on every run.

``expected`` is written only by ``python -m tests.layers.make_golden`` (after a
change that is meant to change plans; read the diff before committing it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lamina.layers.plan import LayerRef, Plan, make_plan
from lamina.layers.rules import builtin
from lamina.store.blob import BlobKind
from lamina.tree.model import Entry, encode_tree

GOLDEN = Path(__file__).parent / "golden"


class _Dir(dict[str, Any]):
    """A folder while a tree is built: its children, and its own entry's spec."""

    meta: dict[str, Any] = {"type": "dir"}  # replaced per folder, never mutated


class MemoryTrees:
    """``load`` and ``put`` over a dict: the store a plan needs, without a store."""

    def __init__(self) -> None:
        self.blobs: dict[bytes, bytes] = {}

    def put(self, kind: BlobKind, data: bytes) -> bytes:
        bid = hashlib.sha256(bytes([int(kind)]) + data).digest()
        self.blobs[bid] = data
        return bid

    def put_data(self, data: bytes) -> bytes:
        return self.put(BlobKind.DATA, data)

    def load(self, bid: bytes) -> bytes:
        return self.blobs[bid]

    def entry(self, name: str, spec: str | dict[str, Any]) -> Entry:
        if isinstance(spec, str):
            spec = {"data": spec}
        kind = spec.get("type", "file")
        base = Entry(
            name=name.encode(),
            type=kind,
            mode=int(spec.get("mode", 0o755 if kind == "dir" else 0o644)),
            uid=int(spec.get("uid", 0)),
            gid=int(spec.get("gid", 0)),
        )
        if kind == "file":
            data = spec.get("data", "").encode()
            base.size = len(data)
            base.content = [self.put_data(data)] if data else []
        elif kind == "symlink":
            base.target = spec["target"].encode()
        return base

    def tree(self, files: dict[str, str | dict[str, Any]]) -> bytes:
        """A tree holding ``files`` (absolute paths); missing folders are made 0755."""
        root = _Dir()
        for path, spec in files.items():
            *parents, name = path.strip("/").split("/")
            node = root
            for part in parents:
                node = node.setdefault(part, _Dir())
            if isinstance(spec, dict) and spec.get("type") == "dir":
                node.setdefault(name, _Dir()).meta = spec
            else:
                node[name] = spec
        return self._make(root)

    def _make(self, node: _Dir) -> bytes:
        entries = []
        for name, child in sorted(node.items()):
            if isinstance(child, _Dir):
                e = self.entry(name, child.meta)
                e.subtree = self._make(child)
            else:
                e = self.entry(name, child)
            entries.append(e)
        return self.put(BlobKind.TREE, encode_tree(entries))

    def text(self, content: list[bytes | int] | None) -> str | None:
        if content is None:
            return None
        data = b"".join(b"\0" * c if isinstance(c, int) else self.blobs[c] for c in content)
        return data.decode(errors="surrogateescape")


def _refs(trees: MemoryTrees, specs: list[dict[str, Any]]) -> list[LayerRef]:
    return [
        LayerRef(
            s["label"],
            s.get("kind", "base"),
            trees.tree(s["files"]),
            tuple(s.get("whiteouts", ())),
            tuple(s["packages"]) if s.get("packages") is not None else None,
        )
        for s in specs
    ]


def run_case(inputs: dict[str, Any]) -> dict[str, Any]:
    """Make the plan of one case's inputs, as the JSON the golden file holds."""
    trees = MemoryTrees()
    current = inputs.get("current")
    plan = make_plan(
        trees.load,
        trees.put_data,
        trees.tree(current) if current is not None else None,
        _refs(trees, inputs.get("old", [])),
        _refs(trees, inputs.get("new", [])),
        builtin(inputs.get("rules", "debian")),
        disk_free=inputs.get("disk_free"),
        remove_unowned=inputs.get("remove_unowned", False),
    )
    return render(trees, plan)


def render(trees: MemoryTrees, plan: Plan) -> dict[str, Any]:
    return {
        "items": [[i.path, i.action, i.layer, i.detail] for i in plan.items],
        "counts": plan.counts(),
        "writes": {
            p: {"type": e.type, "mode": oct(e.mode), "size": e.size, "data": trees.text(e.content)}
            for p, e in sorted(plan.writes.items())
        },
        "removes": plan.removes,
        "dirs": sorted(plan.dirs),
        "download_bytes": plan.download_bytes,
        "space_needed": plan.space_needed,
        "refused": plan.refused,
        "expect": {p: plan.expect[p] for p in sorted(plan.expect)},
        "dpkg_base": trees.text(plan.dpkg_base),
    }


def cases() -> list[Path]:
    return sorted(GOLDEN.glob("*.json"))


def load_case(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc
