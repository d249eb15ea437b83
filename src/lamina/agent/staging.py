"""Staged transactions: prepared now, applied atomically by ``lamina agent boot``.

A transaction lives in ``STATE/staging/<id>/`` on the endpoint's file system:

    new/        the files to put in place, already complete
    old/        what they replace, moved aside during apply (kept until commit)
    journal.json  {"v": 2, "id", "state", "ops": [[op, path], ...], "done": n, "summary",
                   "error"?, "rolled_back"?}

ops: ``swap`` (current path → old/, new/ path → place) and ``remove``
(current path → old/). ``state``: ``staged`` → ``applying`` → ``committed``,
or ``failed`` when an op failed and every op before it was undone.

Apply writes ``applying`` before the first rename and bumps ``done`` after each
op (fsync each time). Every op is reversible from what is on disk alone, so
``boot`` after a crash first rolls back whatever an interrupted apply did
(undoing ops in reverse order, checking where each file is), then applies again
from the start. An op that fails (EXDEV, EROFS, ENOSPC, a symlinked parent) rolls
back at once and the transaction is ``failed``, never retried. The endpoint is
therefore wholly old or wholly new after boot. Renames go through folder
descriptors walked with ``O_NOFOLLOW``. For tests, ``fail_after=N`` (the CLI's
``LAMINA_BOOT_FAIL_AFTER``) makes apply stop dead after N ops.

A revert is planned from the snapshot TREE against the live root (``plan_revert``),
never from a staged copy, and stages only the paths it swaps.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from lamina.agent.blobs import agent_blobs
from lamina.agent.facts import os_release
from lamina.agent.journal import Journal
from lamina.agent.live import (
    RevertPlan,
    RevertScope,
    is_real_dir,
    live_state,
    lstat_or_none,
    plan_revert,
    tree_bytes,
)
from lamina.agent.state import AgentState, write_json_atomic
from lamina.agent.sync import protected_area
from lamina.agent.transport import AgentClient
from lamina.errors import (
    ConflictError,
    IntegrityError,
    LaminaError,
    TooLargeError,
    UnsafePathError,
    UsageError,
)
from lamina.layers.merge import merge_dpkg_live, parse_dpkg_status, render_dpkg_status
from lamina.layers.plan import DPKG_STATUS
from lamina.layers.rules import RuleSet, for_os, matches
from lamina.layers.trees import MAX_READ, read_file
from lamina.protocol.schemas import PolicySettings
from lamina.protocol.tasks import LayerApplyParams, RevertParams
from lamina.store import blob
from lamina.store.chunker import Chunker
from lamina.store.keys import ChunkingSecret
from lamina.tree.model import Entry, check_name, decode_tree
from lamina.tree.restore import BlobSource, restore_tree
from lamina.tree.sources import BatchedBlobs

JOURNAL_VERSION = 2  # 2: adds the "failed" state and its "error", "rolled_back"
READABLE_JOURNALS = (1, 2)
STAGED, APPLYING, COMMITTED, FAILED = "staged", "applying", "committed", "failed"
STATES = (STAGED, APPLYING, COMMITTED, FAILED)


class InjectedCrash(Exception):
    """Raised by the test hook to stop an apply dead, like a power cut."""


@dataclass
class Transaction:
    path: Path
    journal: Journal

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


def parse_journal(raw: bytes, where: str) -> Journal:
    """Validate a journal; anything unexpected is an ``IntegrityError`` saying what."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise IntegrityError(f"{where}: the journal is not valid JSON: {e}") from e
    if (
        not isinstance(doc, dict)
        or type(doc.get("v")) is not int
        or doc["v"] not in READABLE_JOURNALS
    ):
        raise IntegrityError(
            f"{where}: unsupported journal version (expected v in {READABLE_JOURNALS})"
        )
    if not isinstance(doc.get("id"), str) or doc.get("state") not in STATES:
        raise IntegrityError(f"{where}: expected a string id and a state in {STATES}")
    ops = doc.get("ops")
    if not isinstance(ops, list):
        raise IntegrityError(f"{where}: expected a list of ops, found {type(ops).__name__}")
    for op in ops:
        if (
            not isinstance(op, list)
            or len(op) != 2
            or op[0] not in ("swap", "remove", "meta")
            or not isinstance(op[1], str)
        ):
            raise IntegrityError(f"{where}: expected [swap|remove, path], found {op!r:.80}")
        try:
            for part in op[1].split("/"):
                check_name(os.fsencode(part))
        except (LaminaError, ValueError) as e:
            raise IntegrityError(f"{where}: unsafe path in an op: {op[1]!r:.80}") from e
    done = doc.get("done")
    if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= len(ops):
        raise IntegrityError(f"{where}: expected done between 0 and {len(ops)}, found {done!r:.20}")
    if not isinstance(doc.get("summary"), dict):
        raise IntegrityError(f"{where}: expected a summary object")
    meta = doc.get("meta") or {}
    if not isinstance(meta, dict):
        raise IntegrityError(f"{where}: expected a meta object")
    for op in ops:
        if op[0] == "meta":
            m = meta.get(op[1])
            if not isinstance(m, dict) or not all(_valid_meta(m.get(k)) for k in ("old", "new")):
                raise IntegrityError(f"{where}: no valid metadata for the meta op on {op[1]!r:.80}")
    return cast(Journal, doc)  # the checks above are the shape ``Journal`` states


def _valid_meta(m: object) -> bool:
    """[mode, uid, gid, [[name hex, value hex], ...]] with values a folder can take."""
    if not (isinstance(m, list) and len(m) == 4 and isinstance(m[3], list)):
        return False
    mode, uid, gid = m[:3]
    if not all(type(x) is int and 0 <= x < 2**32 for x in (mode, uid, gid)) or mode > 0o7777:
        return False
    for x in m[3]:
        if not (isinstance(x, list) and len(x) == 2 and all(isinstance(h, str) for h in x)):
            return False
        try:
            if not bytes.fromhex(x[0]):
                return False
            bytes.fromhex(x[1])
        except ValueError:
            return False
    return True


def pending(state_dir: Path, root: Path) -> list[Transaction]:
    base = staging_root(state_dir, root)
    out = []
    for d in sorted(base.iterdir()):
        j = d / "journal.json"
        if j.is_file():
            out.append(Transaction(d, parse_journal(j.read_bytes(), str(j))))
    return out


def _agent_folders(state_dir: Path, root: Path) -> frozenset[str]:
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


def _new_transaction(state_dir: Path, root: Path) -> Transaction:
    base = staging_root(state_dir, root)
    for old in pending(state_dir, root):
        if old.journal["state"] == STAGED or (
            old.journal["state"] == FAILED and old.journal.get("rolled_back")
        ):
            shutil.rmtree(old.path)  # a newer plan supersedes one not yet applied
        else:
            raise UsageError(
                f"transaction {old.path.name} is {old.journal['state']}: run `lamina agent boot` first"
            )
    tid = uuid.uuid4().hex
    empty: Journal = {
        "v": JOURNAL_VERSION,
        "id": tid,
        "state": STAGED,
        "ops": [],
        "done": 0,
        "summary": {},
    }
    return Transaction(base / tid, empty)


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


def stage_tree(
    blobs: BlobSource,
    tree_root: bytes,
    root: Path,
    state_dir: Path,
    scope: RevertScope,
    chunking: ChunkingSecret,
    summary: dict[str, Any],
) -> tuple[Transaction, RevertPlan]:
    """Plan from the tree against the live root, then stage only what the plan swaps."""
    plan = plan_revert(blobs.get, tree_root, root, scope, chunking)
    tx = _new_transaction(state_dir, root)
    base = tx.path.parent
    _check_devices(plan.ops, root, base)
    _check_space(base, plan.space_needed)
    _materialise(tx, blobs, tree_root, [rel for op, rel in plan.ops if op == "swap"])
    tx.journal = {
        "v": JOURNAL_VERSION,
        "id": tx.path.name,
        "state": STAGED,
        "ops": plan.ops,
        "done": 0,
        "summary": summary,
        "meta": plan.meta,
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
        exclude, _ = protected_area(policy, rules, root, state_dir)

        def protected_fn(path: str, is_dir: bool) -> bool:
            return not exclude(os.fsencode(path.lstrip("/")), is_dir)

        protected = protected_fn
    untouched = _agent_folders(state_dir, root) | {p.strip("/") for p in error_paths}
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
    )
    return {"transaction": tx.journal["id"], "operations": len(tx.journal["ops"]), **plan.public()}


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
    expect: dict[str, list[Any] | None] | None = None,
    never_override: tuple[str, ...] = (),
    chunking: ChunkingSecret | None = None,
    dpkg_base: list[bytes | int] | None = None,
) -> Transaction:
    """Materialise a delta tree in staging and plan its swaps and removals.

    With ``expect`` (the state the server's plan assumed, per path), each op is
    checked against the live endpoint first: see ``_reconcile``."""
    tx = _new_transaction(state_dir, root)
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
    seeded = _seed_from_endpoint(blobs, root, delta, st.chunking)
    summary: dict[str, Any] = {
        "kind": "layers",
        "versions": list(params.versions),
        "labels": list(params.labels),
        "seeded_bytes": seeded,
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
    tx.journal["summary"]["downloaded_bytes"] = blobs.fetched_bytes
    tx.save()
    return {
        "transaction": tx.journal["id"],
        "operations": len(tx.journal["ops"]),
        **tx.journal["summary"],
    }


# --- applying at boot --------------------------------------------------------------
# Every rename goes through descriptors of the folders involved, walked from the
# root (or the transaction's new/ and old/) with O_NOFOLLOW: a symlink planted
# in a parent after staging is refused, never followed.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_parent(base: Path, rel: str, create: bool) -> tuple[int, str]:
    """A descriptor of ``rel``'s folder under ``base`` and ``rel``'s last name.

    ``create`` makes missing folders (only in the transaction's own folders)."""
    parts = rel.split("/")
    fd = os.open(base, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError(
                f"{base}/{rel}: a parent folder is a symlink or not a folder; refused"
            ) from e
        raise
    return fd, parts[-1]


def _exists(base: Path, rel: str) -> bool:
    try:
        fd, name = _open_parent(base, rel, False)
    except FileNotFoundError:
        return False
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def _move(src: Path, dst: Path, rel: str, create: bool) -> None:
    sfd, name = _open_parent(src, rel, False)
    try:
        dfd, _ = _open_parent(dst, rel, create)
        try:
            os.rename(name, name, src_dir_fd=sfd, dst_dir_fd=dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _set_dir_meta(root: Path, rel: str, meta: list[Any]) -> None:
    """Give the folder ``rel`` owner, mode and xattrs, through descriptors only."""
    mode, uid, gid, xattrs = meta
    pfd, name = _open_parent(root, rel, False)
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
    finally:
        os.close(pfd)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)  # after chown, which clears setgid
        want = {bytes.fromhex(k): bytes.fromhex(v) for k, v in xattrs}
        for n in os.listxattr(fd):
            if os.fsencode(n) not in want:
                with contextlib.suppress(OSError):  # e.g. a security label the kernel keeps
                    os.removexattr(fd, n)
        for k, v in want.items():
            os.setxattr(fd, k, v)
    finally:
        os.close(fd)


def _do(tx: Transaction, root: Path, op: str, rel: str) -> None:
    if op == "meta":
        _set_dir_meta(root, rel, tx.journal["meta"][rel]["new"])
        return
    if _exists(root, rel) and not _exists(tx.old, rel):
        _move(root, tx.old, rel, create=True)
    if op == "swap" and _exists(tx.new, rel):
        _move(tx.new, root, rel, create=False)


def _undo(tx: Transaction, root: Path, op: str, rel: str) -> None:
    if op == "meta":
        _set_dir_meta(root, rel, tx.journal["meta"][rel]["old"])
        return
    if op == "swap" and _exists(root, rel) and not _exists(tx.new, rel):
        _move(root, tx.new, rel, create=True)
    if _exists(tx.old, rel) and not _exists(root, rel):
        _move(tx.old, root, rel, create=False)


def rollback(tx: Transaction, root: Path) -> list[str]:
    """Undo the ops an apply did, last first; returns the ops that could not be undone."""
    ops = tx.journal["ops"]
    upto = min(tx.journal["done"] + 1, len(ops))  # the op in flight may be half done
    stuck = []
    for op, rel in reversed(ops[:upto]):
        try:
            _undo(tx, root, op, rel)
        except (OSError, LaminaError) as e:
            stuck.append(f"/{rel}: {e}")
    tx.journal["state"] = STAGED
    tx.journal["done"] = 0
    tx.save()
    return stuck


def apply(tx: Transaction, root: Path, fail_after: int = -1) -> None:
    tx.journal["state"] = APPLYING
    tx.save()
    tx.old.mkdir(exist_ok=True)
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


def _fail(tx: Transaction, root: Path, err: BaseException) -> str:
    """An op failed: put every op back, and mark the transaction failed for good."""
    stuck = rollback(tx, root)
    message = f"apply failed, rolled back: {err}"
    if stuck:
        message = f"apply failed ({err}) and {len(stuck)} ops could not be undone: {stuck[:3]}"
    tx.journal["state"] = FAILED
    tx.journal["error"] = message
    tx.journal["rolled_back"] = not stuck
    tx.save()
    if not stuck:  # nothing of the endpoint is left in old/: free the staged copy
        shutil.rmtree(tx.new, ignore_errors=True)
        shutil.rmtree(tx.old, ignore_errors=True)
    return message


def boot(state_dir: Path, root: Path, fail_after: int = -1) -> list[dict[str, Any]]:
    """Finish every staged transaction: roll back a half-applied one, then apply it whole.

    An op that fails (EXDEV, EROFS, ENOSPC, a symlinked parent) rolls back every
    op already applied; the transaction is then ``failed`` and never retried;
    its entry carries ``error`` so the agent reports the task failed."""
    out = []
    for tx in pending(state_dir, root):
        state = tx.journal["state"]
        if state == COMMITTED:
            shutil.rmtree(tx.path)
            continue
        if state == FAILED:
            continue
        entry = {
            "transaction": tx.journal["id"],
            "operations": len(tx.journal["ops"]),
            **tx.journal["summary"],
        }
        try:
            if state == APPLYING:
                stuck = rollback(tx, root)
                if stuck:
                    raise ConflictError(f"an interrupted apply could not be undone: {stuck[:3]}")
            apply(tx, root, fail_after)
        except (OSError, LaminaError) as e:
            entry["error"] = _fail(tx, root, e)
        out.append(entry)
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
