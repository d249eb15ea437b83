"""Staging: plan a change against the live root and materialise it in ``new/``.

Nothing on the endpoint changes here: ``apply.boot`` puts a staged transaction
in place at the next boot. A revert is planned from the snapshot TREE against
the live root (``plan_revert``), never from a staged copy, and stages only the
paths it swaps; a layer delivery stages a delta tree, reconciled with the live
endpoint (``_reconcile``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lamina.agent.blobs import agent_blobs
from lamina.agent.deltas import Candidate, seed_by_deltas
from lamina.agent.depmod import kernels_of
from lamina.agent.facts import os_release
from lamina.agent.live import (
    RevertPlan,
    RevertScope,
    is_real_dir,
    live_state,
    lstat_or_none,
    plan_revert,
    tree_bytes,
)
from lamina.agent.staging.journal import (
    JOURNAL_VERSION,
    STAGED,
    Transaction,
    new_transaction,
    staging_root,
)
from lamina.agent.staging.trees import fetch_trees, fetch_walk, into_blobs
from lamina.agent.state import AgentState
from lamina.agent.sync import protected_area
from lamina.agent.transport import AgentClient
from lamina.agent.treecache import TreeCache
from lamina.errors import ConflictError, TooLargeError, UsageError
from lamina.layers.merge import DPKG_STATUS, merge_dpkg_live, parse_dpkg_status, render_dpkg_status
from lamina.layers.rules import RuleSet, for_os, matches
from lamina.protocol.policies import PolicySettings
from lamina.protocol.tasks import LayerApplyParams, RevertParams
from lamina.store import blob
from lamina.store.chunker import Chunker
from lamina.store.keys import ChunkingSecret
from lamina.tree.model import Entry, decode_tree
from lamina.tree.names import check_name
from lamina.tree.paths import MAX_READ, Load, read_file
from lamina.tree.restore import restore_tree
from lamina.tree.restore_types import BlobSource
from lamina.tree.sources import BatchedBlobs


def agent_folders(state_dir: Path, root: Path) -> frozenset[str]:
    out = {".lamina-staging"}
    with contextlib.suppress(ValueError):
        out.add(str(state_dir.resolve().relative_to(root.resolve())))
    return frozenset(out)


def _check_devices(ops: list[list[str]], root: Path, base: Path) -> None:
    """Apply is renames: every op's parent must be on the staging area's file system."""
    dev = os.stat(base).st_dev
    for _, rel in ops:
        parent = (root / rel).parent
        if os.lstat(parent).st_dev != dev:
            raise ConflictError(
                f"/{rel} is on another file system than the staging area: "
                "a staged apply cannot rename across file systems"
            )


def _check_space(base: Path, needed: int) -> None:
    free = shutil.disk_usage(base).free
    if needed > free:
        raise ConflictError(f"staging needs {needed} bytes, the endpoint has {free} free")


def _materialise(tx: Transaction, blobs: BlobSource, tree: bytes, paths: list[str] | None) -> None:
    """Restore into ``new/``; any error (ENOSPC, EIO, a read error) removes the
    half-staged transaction and fails: nothing on the endpoint has changed."""
    try:
        tx.new.mkdir(parents=True)
        if paths == []:
            return
        st = restore_tree(blobs, tree, tx.new, paths=paths or ())
        if st.errors:
            raise ConflictError(
                f"staging failed, nothing was changed: {len(st.errors)} errors, first: {st.errors[0]}"
            )
    except OSError as e:
        shutil.rmtree(tx.path, ignore_errors=True)
        raise ConflictError(f"staging failed, nothing was changed: {e}") from e
    except BaseException:
        shutil.rmtree(tx.path, ignore_errors=True)
        raise


def _read_by_plan(root: Path, scope: RevertScope) -> Callable[[str], bool]:
    """The folders ``plan_revert`` reads: all but the ones it leaves alone (kept classes,
    ``scope.untouched``) and other file systems' mount points, and what is below them."""
    root_dev = os.lstat(root).st_dev

    def reads(rel: str) -> bool:
        if scope.leaves_alone(rel):
            return False
        st = lstat_or_none(root / rel)
        return st is None or st.st_dev == root_dev

    return reads


def stage_tree(
    blobs: BlobSource,
    tree_root: bytes,
    root: Path,
    state_dir: Path,
    scope: RevertScope,
    chunking: ChunkingSecret,
    summary: dict[str, Any],
    *,
    skip: frozenset[str] = frozenset(),
    client: AgentClient | None = None,
    trees: TreeCache | None = None,
) -> tuple[Transaction, RevertPlan]:
    """Plan from the tree against the live root, then stage only what the plan swaps.

    ``skip``: relative paths of folders the plan walks through: their metadata is left
    as it is and they are never removed (one the endpoint lacks is still put in place).
    With ``client``, the swapped files' chunks the endpoint holds at the same paths are
    not downloaded, and files it holds another version of come as deltas. Each folder
    listing is downloaded once (``trees``, or a cache of this call's own)."""
    with contextlib.ExitStack() as stack:
        if trees is None:
            trees = stack.enter_context(
                TreeCache(blobs, staging_root(state_dir, root), chunking.id_key)
            )
        if client is not None:
            fetch_walk(client, tree_root, chunking.id_key, trees, _read_by_plan(root, scope))
        plan = plan_revert(trees.tree, tree_root, root, scope, chunking)
        if skip:
            plan.ops = [op for op in plan.ops if op[0] == "swap" or op[1] not in skip]
        swaps = [rel for op, rel in plan.ops if op == "swap"]
        if client is not None and isinstance(blobs, BatchedBlobs) and swaps:
            wanted = _swapped_files(trees.tree, tree_root, swaps)
            summary["seeded_bytes"], summary["delta_files"] = _seed_files(
                blobs, root, wanted, chunking, client
            )
        tx = new_transaction(state_dir, root)
        base = tx.path.parent
        _check_devices(plan.ops, root, base)
        _check_space(base, plan.space_needed)
        _materialise(tx, trees, tree_root, swaps)
        tx.journal = {
            "v": JOURNAL_VERSION,
            "id": tx.path.name,
            "state": STAGED,
            "ops": plan.ops,
            "done": 0,
            "summary": summary,
            "meta": plan.meta,
            "depmod": kernels_of(plan.ops, (tx.new, root)),
        }
        tx.save()
    return tx, plan


def system_only_keep(rules: RuleSet) -> Callable[[str], bool]:
    """A system-only revert keeps user data, machine identity and excluded paths as they are now."""

    def keep(path: str) -> bool:
        return rules.classify(path) in ("user_data", "machine_identity", "excluded")

    return keep


def revert_scope(
    rules: RuleSet,
    system_only: bool,
    policy: PolicySettings | None,
    root: Path,
    state_dir: Path,
    error_paths: list[str] = (),  # type: ignore[assignment]
) -> RevertScope:
    """The scope of a revert: kept classes, the snapshot policy's protected area."""
    keep = system_only_keep(rules) if system_only else (lambda p: rules.classify(p) == "excluded")
    protected = None
    if policy is not None:
        exclude = protected_area(policy, rules, root, state_dir).exclude

        def protected_fn(path: str, is_dir: bool) -> bool:
            return not exclude(os.fsencode(path.lstrip("/")), is_dir)

        protected = protected_fn
    untouched = agent_folders(state_dir, root) | {p.strip("/") for p in error_paths}
    return RevertScope(keep, protected, frozenset(untouched))


def stage_revert(
    client: AgentClient, st: AgentState, state_dir: Path, params: RevertParams
) -> dict[str, Any]:
    """Stage a revert to a snapshot (or with ``dry_run`` only plan it); the endpoint
    changes at the next ``agent boot``."""
    root = Path(st.root)
    rules = for_os(os_release(root))
    system_only = params.system_only
    policy = params.policy
    errors = list(params.error_paths)
    if params.scan_errors > len(errors):
        policy = None  # not every unreadable path is known: remove nothing
    scope = revert_scope(rules, system_only, policy, root, state_dir, errors)
    blobs = agent_blobs(client, st.chunking.id_key)
    tree = bytes.fromhex(params.root)
    if params.dry_run:
        plan = plan_revert(blobs.get, tree, root, scope, st.chunking)
        return {"dry_run": True, **plan.public()}
    tx, plan = stage_tree(
        blobs,
        tree,
        root,
        state_dir,
        scope,
        st.chunking,
        {"kind": "revert", "snapshot": params.snapshot, "system_only": system_only},
        client=client,
    )
    return {
        "transaction": tx.journal["id"],
        "operations": len(tx.journal["ops"]),
        "seeded_bytes": tx.journal["summary"].get("seeded_bytes", 0),
        "delta_files": tx.journal["summary"].get("delta_files", 0),
        **plan.public(),
    }


def _seed_from_endpoint(
    blobs: BatchedBlobs,
    root: Path,
    delta: bytes,
    chunking: ChunkingSecret,
    client: AgentClient | None = None,
) -> tuple[int, int]:
    """Chunks the endpoint already holds, read from its own files at the same paths;
    with ``client``, files whose chunks still lack come as deltas against the old
    version (``agent.deltas``). Returns the bytes seeded and the files sent as deltas."""
    wanted: dict[str, Entry] = {}
    level = [(delta, "")]
    keep, held = into_blobs(blobs), blobs.local.__contains__
    while level:
        # A level's folders are asked for together (a few requests, not one per folder
        # changed), in one zstd frame from a server that can (``fetch_trees``); they are
        # read again by the staging that follows: kept, not downloaded again (a
        # delivery's trees hold only what changes: small).
        want = [tid for tid, _ in level if tid not in blobs.local]
        if client is None or not fetch_trees(client, want, chunking.id_key, keep, held):
            blobs.prefetch(set(want))
        below: list[tuple[bytes, str]] = []
        for tid, prefix in level:
            if tid not in blobs.local:
                blobs.local[tid] = blobs.get(tid)
            for e in decode_tree(blobs.local[tid]):
                rel = f"{prefix}/{os.fsdecode(e.name)}" if prefix else os.fsdecode(e.name)
                if e.subtree is not None:
                    below.append((e.subtree, rel))
                elif e.type == "file" and e.content:
                    wanted[rel] = e
        level = below
    return _seed_files(blobs, root, wanted, chunking, client)


def _swapped_files(load: Load, tree: bytes, swaps: list[str]) -> dict[str, Entry]:
    """The files of ``tree`` at or under the paths a plan swaps (folders read by ``load``)."""
    out: dict[str, Entry] = {}
    for rel in swaps:
        entries, entry = decode_tree(load(tree)), None
        for part in rel.split("/"):
            entry = next((e for e in entries if e.name == os.fsencode(part)), None)
            if entry is None:
                break
            entries = decode_tree(load(entry.subtree)) if entry.subtree is not None else []
        if entry is None:
            continue
        todo = [(entry, rel)]
        while todo:
            e, path = todo.pop()
            if e.subtree is not None:
                todo += [(c, f"{path}/{os.fsdecode(c.name)}") for c in decode_tree(load(e.subtree))]
            elif e.type == "file" and e.content:
                out[path] = e
    return out


def _kept_local(blobs: BatchedBlobs) -> Load:
    """Reads folders through ``blobs`` and keeps them there: the restore that follows
    reads them again."""

    def load(tid: bytes) -> bytes:
        if tid not in blobs.local:
            blobs.local[tid] = blobs.get(tid)
        return blobs.local[tid]

    return load


def seed_paths(
    client: AgentClient,
    blobs: BatchedBlobs,
    root: Path,
    tree: bytes,
    paths: list[str],
    chunking: ChunkingSecret,
) -> tuple[int, int]:
    """Before restoring ``paths`` of ``tree`` onto ``root``: chunks the endpoint holds at
    the same paths are not downloaded, files it holds another version of come as deltas.
    Files already as the tree has them are left to the restore (it keeps them in place);
    at most ``SEED_LIMIT`` bytes are held in memory, the rest is downloaded.
    Returns the bytes seeded and the files sent as deltas."""
    wanted = _swapped_files(_kept_local(blobs), tree, paths)
    return _seed_files(blobs, root, wanted, chunking, client, skip_same=True, limit=SEED_LIMIT)


#: Bytes of the endpoint's own chunks a restore holds in memory at most (``seed_paths``).
SEED_LIMIT = 256 * 1024 * 1024


def _seed_files(
    blobs: BatchedBlobs,
    root: Path,
    wanted: dict[str, Entry],
    chunking: ChunkingSecret,
    client: AgentClient | None,
    skip_same: bool = False,
    limit: int | None = None,
) -> tuple[int, int]:
    chunker = Chunker(chunking)
    seeded = 0
    candidates: list[Candidate] = []
    for rel, e in wanted.items():
        if limit is not None and seeded >= limit:
            break
        ids = set(e.chunk_ids())
        p = root / rel
        try:
            if not stat.S_ISREG(os.lstat(p).st_mode) or os.lstat(p).st_size > 1 << 30:
                continue
            data = p.read_bytes()
        except OSError:
            continue
        views = list(chunker.cut(data))
        live_ids = [blob.blob_id(chunking.id_key, v) for v in views]
        if skip_same and live_ids == e.content:
            continue
        for bid, view in zip(live_ids, views, strict=True):
            if bid in ids and bid not in blobs.local:
                blobs.local[bid] = bytes(view)
                seeded += len(view)
        content = e.content or []
        if all(isinstance(c, bytes) for c in content) and any(i not in blobs.local for i in ids):
            new_ids = [c for c in content if isinstance(c, bytes)]
            candidates.append(Candidate(rel, p, len(data), live_ids, new_ids, e.size))
    as_deltas = seed_by_deltas(client, blobs, candidates, chunking) if client else 0
    return seeded, as_deltas


def stage_delta(
    blobs: BatchedBlobs | BlobSource,
    delta: bytes,
    removes: list[str],
    root: Path,
    state_dir: Path,
    summary: dict[str, Any],
    expect: dict[str, list[Any] | None] | None = None,
    never_override: tuple[str, ...] = (),
    chunking: ChunkingSecret | None = None,
    dpkg_base: list[bytes | int] | None = None,
) -> Transaction:
    """Materialise a delta tree in staging and plan its swaps and removals.

    With ``expect`` (the state the server's plan assumed, per path), each op is
    checked against the live endpoint first: see ``_reconcile``."""
    tx = new_transaction(state_dir, root)
    ops = _delta_ops(blobs, delta, root)
    for path in removes:
        rel = str(path).strip("/")
        for part in rel.split("/"):
            check_name(os.fsencode(part))
        if os.path.lexists(root / rel):
            ops.append(["remove", rel])
    base = tx.path.parent
    _check_devices(ops, root, base)
    _check_space(base, _delta_bytes(blobs, delta))
    _materialise(tx, blobs, delta, None)
    if expect is not None and chunking is not None:
        try:
            ops, notes = _reconcile(
                tx, root, ops, expect, never_override, chunking, blobs, dpkg_base
            )
        except BaseException:
            shutil.rmtree(tx.path, ignore_errors=True)
            raise
        summary = {**summary, **notes}
    tx.journal = {
        "v": JOURNAL_VERSION,
        "id": tx.path.name,
        "state": STAGED,
        "ops": ops,
        "done": 0,
        "summary": summary,
        "depmod": kernels_of(ops, (tx.new, root)),
    }
    tx.save()
    return tx


def _keep_aside(tx: Transaction, root: Path, rel: str) -> str:
    """Copy the live file into the transaction as ``NAME.lamina-user`` (owner, mode, times kept)."""
    aside = rel + ".lamina-user"
    src = root / rel
    dst = tx.new / aside
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f, open(dst, "xb") as out:
        shutil.copyfileobj(f, out)
        st = os.fstat(f.fileno())
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    return aside


def _merge_live_dpkg(
    tx: Transaction, root: Path, rel: str, blobs: BlobSource, base: list[bytes | int]
) -> None:
    """Rewrite the staged package database as if the server had planned from the live one."""
    base_bytes = read_file(blobs.get, Entry(name=b"status", type="file", content=base))
    fd = os.open(root / rel, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        live = f.read(MAX_READ + 1)
    if len(live) > MAX_READ:
        raise TooLargeError(f"/{rel}: more than {MAX_READ} bytes")
    staged = tx.new / rel
    merged = merge_dpkg_live(
        parse_dpkg_status(base_bytes),
        parse_dpkg_status(live),
        parse_dpkg_status(staged.read_bytes()),
    )
    st = os.lstat(staged)
    tmp = staged.with_name(staged.name + ".lamina-merge")
    tmp.write_bytes(render_dpkg_status(merged))
    os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, staged)


def _reconcile(
    tx: Transaction,
    root: Path,
    ops: list[list[str]],
    expect: dict[str, list[Any] | None],
    never_override: tuple[str, ...],
    chunking: ChunkingSecret,
    blobs: BlobSource,
    dpkg_base: list[bytes | int] | None,
) -> tuple[list[list[str]], dict[str, list[str]]]:
    """Plans are made against the endpoint as it is now, not its last snapshot.

    A never_override path that exists is skipped. A file changed since the
    server's snapshot is kept beside the layer's as ``NAME.lamina-user``; a
    removal of a changed file is dropped (the user's file stays). dpkg's status,
    changed since, is merged per package with the live one."""
    out: list[list[str]] = []
    notes: dict[str, list[str]] = {"blocked": [], "kept_aside": [], "kept": [], "merged_live": []}
    for op, rel in ops:
        path = "/" + rel
        live = root / rel
        if op == "swap" and matches(never_override, path) and os.path.lexists(live):
            shutil.rmtree(tx.new / rel, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tx.new / rel)
            notes["blocked"].append(rel)
            continue
        if path not in expect or live_state(live, chunking) == expect[path]:
            out.append([op, rel])
            continue
        if op == "remove":
            notes["kept"].append(rel)
            continue
        if path == DPKG_STATUS and dpkg_base is not None and os.path.isfile(tx.new / rel):
            _merge_live_dpkg(tx, root, rel, blobs, dpkg_base)
            notes["merged_live"].append(rel)
            out.append([op, rel])
            continue
        if lstat_or_none(live) is not None and stat.S_ISREG(os.lstat(live).st_mode):
            if not os.path.lexists(root / (rel + ".lamina-user")):
                out.append(["swap", _keep_aside(tx, root, rel)])
            notes["kept_aside"].append(rel)
            out.append([op, rel])
            continue
        if lstat_or_none(live) is None or not is_real_dir(live):
            out.append([op, rel])  # gone or a symlink since: the layer's file goes in
            continue
        shutil.rmtree(tx.new / rel, ignore_errors=True)
        notes["kept"].append(rel)  # a folder now: never replaced by a file
    return out, {k: v for k, v in notes.items() if v}


def _delta_ops(blobs: BlobSource, delta: bytes, root: Path, rel: str = "") -> list[list[str]]:
    """Swap in everything the delta holds; descend where both sides are folders."""
    ops: list[list[str]] = []
    for e in decode_tree(blobs.get(delta)):
        child = f"{rel}/{os.fsdecode(e.name)}" if rel else os.fsdecode(e.name)
        if e.subtree is not None and is_real_dir(root / child):
            ops += _delta_ops(blobs, e.subtree, root, child)
        else:
            ops.append(["swap", child])
    return ops


def _delta_bytes(blobs: BlobSource, delta: bytes) -> int:
    return sum(tree_bytes(blobs.get, e) for e in decode_tree(blobs.get(delta)))


def _content_param(value: object) -> list[bytes | int] | None:
    """A content list sent as JSON (chunk ids in hex, hole sizes as numbers)."""
    if not isinstance(value, list):
        return None
    try:
        return [bytes.fromhex(c) if isinstance(c, str) else int(c) for c in value]
    except (TypeError, ValueError) as e:
        raise UsageError(f"a malformed content list in the delivery: {e}") from e


def stage_layers(
    client: AgentClient, st: AgentState, state_dir: Path, params: LayerApplyParams
) -> dict[str, Any]:
    """Stage a layer delivery: download only what the endpoint lacks, apply at next boot."""
    root = Path(st.root)
    blobs = agent_blobs(client, st.chunking.id_key)
    delta = bytes.fromhex(params.delta)
    received = client.received_bytes
    seeded, as_deltas = _seed_from_endpoint(blobs, root, delta, st.chunking, client)
    summary: dict[str, Any] = {
        "kind": "layers",
        "versions": list(params.versions),
        "labels": list(params.labels),
        "seeded_bytes": seeded,
        "delta_files": as_deltas,
    }
    tx = stage_delta(
        blobs,
        delta,
        list(params.removes),
        root,
        state_dir,
        summary,
        expect=dict(params.expect) if params.expect else None,
        never_override=tuple(params.never_override),
        chunking=st.chunking,
        dpkg_base=_content_param(params.dpkg_base),
    )
    # Bytes on the wire (response bodies as received): trees, chunks and deltas.
    tx.journal["summary"]["downloaded_bytes"] = client.received_bytes - received
    tx.save()
    return {
        "transaction": tx.journal["id"],
        "operations": len(tx.journal["ops"]),
        **tx.journal["summary"],
    }
