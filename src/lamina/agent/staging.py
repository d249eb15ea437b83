"""Staged transactions: prepared now, applied atomically by ``lamina agent boot``.

A transaction lives in ``STATE/staging/<id>/`` on the endpoint's file system:

    new/        the files to put in place, already complete
    old/        what they replace, moved aside during apply (kept until commit)
    journal.json  {"v": 1, "id", "state", "ops": [[op, path], ...], "done": n, "summary"}

ops: ``swap`` (current path → old/, new/ path → place) and ``remove``
(current path → old/). ``state``: ``staged`` → ``applying`` → ``committed``.

Apply writes ``applying`` before the first rename and bumps ``done`` after each
op (fsync each time). Every op is reversible from what is on disk alone, so
``boot`` after a crash first rolls back whatever an interrupted apply did
(undoing ops in reverse order, checking where each file is), then applies again
from the start. The endpoint is therefore wholly old or wholly new after boot.
For tests, ``LAMINA_BOOT_FAIL_AFTER=N`` makes apply stop dead after N ops.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.agent.blobs import agent_blobs
from lamina.agent.facts import os_release
from lamina.agent.state import AgentState, write_json_atomic
from lamina.agent.transport import AgentClient
from lamina.errors import IntegrityError, UsageError
from lamina.layers.rules import RuleSet, for_os
from lamina.store import blob
from lamina.store.chunker import Chunker
from lamina.store.keys import ChunkingSecret
from lamina.tree.model import check_name, decode_tree
from lamina.tree.restore import BlobSource, restore_tree
from lamina.tree.sources import BatchedBlobs

JOURNAL_VERSION = 1
STAGED, APPLYING, COMMITTED = "staged", "applying", "committed"
FAIL_ENV = "LAMINA_BOOT_FAIL_AFTER"


class InjectedCrash(Exception):
    """Raised by the test hook to stop an apply dead, like a power cut."""


@dataclass
class Transaction:
    path: Path
    journal: dict[str, Any]

    @property
    def new(self) -> Path:
        return self.path / "new"

    @property
    def old(self) -> Path:
        return self.path / "old"

    def save(self) -> None:
        write_json_atomic(self.path / "journal.json", self.journal)


def staging_root(state_dir: Path, root: Path) -> Path:
    """Staging must share the root's file system so apply is renames only."""
    candidate = state_dir / "staging"
    candidate.mkdir(parents=True, exist_ok=True)
    if os.stat(candidate).st_dev == os.stat(root).st_dev:
        return candidate
    alt = root / ".lamina-staging"
    alt.mkdir(exist_ok=True, mode=0o700)
    return alt


def pending(state_dir: Path, root: Path) -> list[Transaction]:
    base = staging_root(state_dir, root)
    out = []
    for d in sorted(base.iterdir()):
        j = d / "journal.json"
        if j.is_file():
            doc = json.loads(j.read_text())
            if doc.get("v") != JOURNAL_VERSION:
                raise IntegrityError(f"unsupported journal version in {j}")
            out.append(Transaction(d, doc))
    return out


def _is_real_dir(p: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(p).st_mode)
    except FileNotFoundError:
        return False


def _plan(
    new: Path, root: Path, rel: str, keep: Callable[[str], bool], ops: list[list[str]]
) -> None:
    """Ops that turn ``root/rel`` into ``new/rel``, leaving kept classes alone."""
    n_dir, r_dir = new / rel if rel else new, root / rel if rel else root
    names = set(os.listdir(n_dir)) | (set(os.listdir(r_dir)) if _is_real_dir(r_dir) else set())
    for name in sorted(names):
        child = f"{rel}/{name}" if rel else name
        if keep("/" + child):
            continue
        n, r = new / child, root / child
        in_new, in_root = os.path.lexists(n), os.path.lexists(r)
        if in_new and in_root and _is_real_dir(n) and _is_real_dir(r):
            _plan(new, root, child, keep, ops)
        elif in_new:
            if in_root and not _is_real_dir(n) and _same_file(n, r):
                continue
            ops.append(["swap", child])
        else:
            ops.append(["remove", child])


def _same_file(a: Path, b: Path) -> bool:
    sa, sb = os.lstat(a), os.lstat(b)
    if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
        return False
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(a) == os.readlink(b)
    if (sa.st_size, sa.st_mtime_ns, sa.st_mode, sa.st_uid, sa.st_gid) != (
        sb.st_size,
        sb.st_mtime_ns,
        sb.st_mode,
        sb.st_uid,
        sb.st_gid,
    ):
        return False
    return stat.S_ISREG(sa.st_mode) and _content_equal(a, b)


def _content_equal(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def stage_tree(
    blobs: BlobSource,
    tree_root: bytes,
    root: Path,
    state_dir: Path,
    keep: Callable[[str], bool],
    summary: dict[str, Any],
) -> Transaction:
    """Materialise a tree in staging and plan the swap; nothing on the endpoint changes yet."""
    base = staging_root(state_dir, root)
    for old in pending(state_dir, root):
        if old.journal["state"] == STAGED:
            shutil.rmtree(old.path)  # a newer plan supersedes one not yet applied
        else:
            raise UsageError(
                f"transaction {old.path.name} is {old.journal['state']}: run `lamina agent boot` first"
            )
    tx = Transaction(base / uuid.uuid4().hex, {})
    tx.new.mkdir(parents=True)
    restore_tree(blobs, tree_root, tx.new)
    ops: list[list[str]] = []
    _plan(tx.new, root, "", keep, ops)
    tx.journal = {
        "v": JOURNAL_VERSION,
        "id": tx.path.name,
        "state": STAGED,
        "ops": ops,
        "done": 0,
        "summary": summary,
    }
    tx.save()
    return tx


def system_only_keep(rules: RuleSet) -> Callable[[str], bool]:
    """A system-only revert keeps user data, machine identity and excluded paths as they are now."""

    def keep(path: str) -> bool:
        return rules.classify(path) in ("user_data", "machine_identity", "excluded")

    return keep


def stage_revert(
    client: AgentClient, st: AgentState, state_dir: Path, params: dict[str, Any]
) -> dict[str, Any]:
    """Stage a revert to a snapshot; the endpoint changes at the next ``agent boot``."""
    root = Path(st.root)
    rules = for_os(os_release(root))
    keep = (
        system_only_keep(rules)
        if params.get("system_only", True)
        else (lambda p: rules.classify(p) == "excluded")
    )
    tx = stage_tree(
        agent_blobs(client, st.chunking.id_key),
        bytes.fromhex(params["root"]),
        root,
        state_dir,
        keep,
        {
            "kind": "revert",
            "snapshot": params.get("snapshot"),
            "system_only": params.get("system_only", True),
        },
    )
    return {"transaction": tx.journal["id"], "operations": len(tx.journal["ops"])}


def _plan_delta(new: Path, root: Path, rel: str, ops: list[list[str]]) -> None:
    """Swap in everything the delta holds; descend where both sides are folders."""
    n_dir = new / rel if rel else new
    for name in sorted(os.listdir(n_dir)):
        child = f"{rel}/{name}" if rel else name
        if _is_real_dir(new / child) and _is_real_dir(root / child):
            _plan_delta(new, root, child, ops)
        else:
            ops.append(["swap", child])


def _seed_from_endpoint(
    blobs: BatchedBlobs, root: Path, delta: bytes, chunking: ChunkingSecret
) -> int:
    """Chunks the endpoint already holds, read from its own files at the same paths."""
    wanted: dict[str, set[bytes]] = {}
    todo = [(delta, "")]
    while todo:
        tid, prefix = todo.pop()
        for e in decode_tree(blobs.get(tid)):
            rel = f"{prefix}/{os.fsdecode(e.name)}" if prefix else os.fsdecode(e.name)
            if e.subtree is not None:
                todo.append((e.subtree, rel))
            elif e.type == "file" and e.content:
                wanted[rel] = set(e.chunk_ids())
    chunker = Chunker(chunking)
    seeded = 0
    for rel, ids in wanted.items():
        p = root / rel
        try:
            if not stat.S_ISREG(os.lstat(p).st_mode) or os.lstat(p).st_size > 1 << 30:
                continue
            data = p.read_bytes()
        except OSError:
            continue
        for view in chunker.cut(data):
            bid = blob.blob_id(chunking.id_key, view)
            if bid in ids and bid not in blobs.local:
                blobs.local[bid] = bytes(view)
                seeded += len(view)
    return seeded


def stage_delta(
    blobs: BatchedBlobs | BlobSource,
    delta: bytes,
    removes: list[str],
    root: Path,
    state_dir: Path,
    summary: dict[str, Any],
) -> Transaction:
    """Materialise a delta tree in staging and plan its swaps and removals."""
    base = staging_root(state_dir, root)
    for old in pending(state_dir, root):
        if old.journal["state"] == STAGED:
            shutil.rmtree(old.path)
        else:
            raise UsageError(
                f"transaction {old.path.name} is {old.journal['state']}: run `lamina agent boot` first"
            )
    tx = Transaction(base / uuid.uuid4().hex, {})
    tx.new.mkdir(parents=True)
    restore_tree(blobs, delta, tx.new)
    ops: list[list[str]] = []
    _plan_delta(tx.new, root, "", ops)
    for path in removes:
        rel = str(path).strip("/")
        for part in rel.split("/"):
            check_name(os.fsencode(part))
        if os.path.lexists(root / rel):
            ops.append(["remove", rel])
    tx.journal = {
        "v": JOURNAL_VERSION,
        "id": tx.path.name,
        "state": STAGED,
        "ops": ops,
        "done": 0,
        "summary": summary,
    }
    tx.save()
    return tx


def stage_layers(
    client: AgentClient, st: AgentState, state_dir: Path, params: dict[str, Any]
) -> dict[str, Any]:
    """Stage a layer delivery: download only what the endpoint lacks, apply at next boot."""
    root = Path(st.root)
    blobs = agent_blobs(client, st.chunking.id_key)
    delta = bytes.fromhex(params["delta"])
    seeded = _seed_from_endpoint(blobs, root, delta, st.chunking)
    summary: dict[str, Any] = {
        "kind": "layers",
        "versions": params.get("versions", []),
        "labels": params.get("labels", []),
        "seeded_bytes": seeded,
    }
    tx = stage_delta(blobs, delta, list(params.get("removes") or []), root, state_dir, summary)
    tx.journal["summary"]["downloaded_bytes"] = blobs.fetched_bytes
    tx.save()
    return {
        "transaction": tx.journal["id"],
        "operations": len(tx.journal["ops"]),
        **tx.journal["summary"],
    }


# --- applying at boot --------------------------------------------------------------
def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dst)


def _do(tx: Transaction, root: Path, op: str, rel: str) -> None:
    cur, aside, new = root / rel, tx.old / rel, tx.new / rel
    if os.path.lexists(cur) and not os.path.lexists(aside):
        _move(cur, aside)
    if op == "swap" and os.path.lexists(new):
        _move(new, cur)


def _undo(tx: Transaction, root: Path, op: str, rel: str) -> None:
    cur, aside, new = root / rel, tx.old / rel, tx.new / rel
    if op == "swap" and os.path.lexists(cur) and not os.path.lexists(new):
        _move(cur, new)
    if os.path.lexists(aside) and not os.path.lexists(cur):
        _move(aside, cur)


def rollback(tx: Transaction, root: Path) -> None:
    ops = tx.journal["ops"]
    upto = min(tx.journal["done"] + 1, len(ops))  # the op in flight may be half done
    for op, rel in reversed(ops[:upto]):
        _undo(tx, root, op, rel)
    tx.journal["state"] = STAGED
    tx.journal["done"] = 0
    tx.save()


def apply(tx: Transaction, root: Path) -> None:
    fail_after = int(os.environ.get(FAIL_ENV, "-1"))
    tx.journal["state"] = APPLYING
    tx.save()
    for i, (op, rel) in enumerate(tx.journal["ops"]):
        if i == fail_after:
            raise InjectedCrash(f"injected crash after {i} operations")
        _do(tx, root, op, rel)
        tx.journal["done"] = i + 1
        tx.save()
    if fail_after == len(tx.journal["ops"]):
        raise InjectedCrash("injected crash before commit")
    tx.journal["state"] = COMMITTED
    tx.save()
    shutil.rmtree(tx.path)


def boot(state_dir: Path, root: Path) -> list[dict[str, Any]]:
    """Finish every staged transaction: roll back a half-applied one, then apply it whole."""
    out = []
    for tx in pending(state_dir, root):
        state = tx.journal["state"]
        if state == COMMITTED:
            shutil.rmtree(tx.path)
            continue
        if state == APPLYING:
            rollback(tx, root)
        apply(tx, root)
        out.append(
            {
                "transaction": tx.journal["id"],
                "operations": len(tx.journal["ops"]),
                **tx.journal["summary"],
            }
        )
    return out


def drop(state_dir: Path, root: Path, tx_id: str) -> bool:
    """Discard staged transaction ``tx_id`` (its task was cancelled) if not yet applied.

    The journal goes first (one unlink): a crash after it leaves a folder that
    ``pending`` ignores, so ``boot`` never applies a dropped transaction.
    Returns whether it was found staged and dropped.
    """
    for tx in pending(state_dir, root):
        if tx.journal["id"] == tx_id and tx.journal["state"] == STAGED:
            os.unlink(tx.path / "journal.json")
            shutil.rmtree(tx.path)
            return True
    return False
