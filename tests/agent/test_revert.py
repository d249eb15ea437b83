"""Reverts put back only what the snapshot could have held, all or nothing (review findings 2, 3, 6).

Each test is a review reproduction run on real files: a real store, a real
backup, real staging and a real ``boot``; small file systems are real tmpfs
mounts (the suite runs as root), never mocks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.agent import staging
from lamina.agent.staging import stage as staging_stage  # (the package loads it lazily)
from lamina.agent.sync import protected_area
from lamina.errors import ConflictError, IntegrityError
from lamina.layers.rules import builtin
from lamina.protocol.schemas import PolicySettings
from lamina.store.blob import BlobKind
from lamina.store.repository import Store
from lamina.tree.backup import backup

RULES = builtin("linux")


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, str], Path]]:
    """Mount a tmpfs of a given size at a path (removed at the end)."""
    mounted: list[Path] = []

    def mount(at: Path, size: str) -> Path:
        at.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(at)],
            capture_output=True,
            check=False,
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(at)
        return at

    yield mount
    for at in reversed(mounted):
        subprocess.run(["umount", "-l", str(at)], check=False)


def snapshot(store: Store, root: Path, state: Path, policy: PolicySettings) -> bytes:
    """A sync's snapshot: the protected area of ``policy``, as the agent scans it."""
    exclude = protected_area(policy, RULES, root, state).exclude
    return backup(store, root, exclude=exclude).snapshot.root


def stage(
    store: Store,
    tree: bytes,
    root: Path,
    state: Path,
    policy: PolicySettings | None,
    system_only: bool = True,
    error_paths: tuple[str, ...] = (),
) -> tuple[staging.Transaction, staging.RevertPlan]:
    scope = staging.revert_scope(RULES, system_only, policy, root, state, list(error_paths))
    return staging.stage_tree(
        store, tree, root, state, scope, store.keys.chunking, {"kind": "revert"}
    )


def files(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if not p.is_symlink():
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


# --- finding 3: nothing unprotected is ever removed ------------------------------------
def test_revert_never_removes_what_the_policy_did_not_protect(
    store: Store, tmp_path: Path, tmpfs: Callable[[Path, str], Path]
) -> None:
    """The review's repro: exclude=["/data/**"], then a revert to undo a config change."""
    root, state = tmp_path / "root", tmp_path / "state"
    for d in ("etc", "data", "home/alice", "usr/lib", "opt/vm"):
        (root / d).mkdir(parents=True)
    (root / "etc/app.conf").write_text("v1\n")
    (root / "data/customer.db").write_text("customers\n")
    (root / "home/alice/notes.txt").write_text("alice's notes\n")
    (root / "usr/lib/libold.so").write_bytes(b"old")
    policy = PolicySettings(exclude=["/data/**", "/opt/vm/**"], classes=["system"])
    tree = snapshot(store, root, state, policy)
    (root / "etc/app.conf").write_text("v2 broken\n")
    (root / "data/new.db").write_text("new customers\n")
    (root / "opt/vm/disk.img").write_bytes(b"vm")
    (root / "home/alice/later.txt").write_text("written after the snapshot\n")
    (root / "usr/lib/libnew.so").write_bytes(b"installed later")
    (root / "usr/lib/unreadable.so").write_bytes(b"the scan could not read it")
    tmpfs(root / "srv-mount", "1M")
    (root / "srv-mount/x").write_text("another file system\n")
    for system_only in (True, False):
        _tx, plan = stage(
            store, tree, root, state, policy, system_only, error_paths=("usr/lib/unreadable.so",)
        )
        assert sorted(plan.removed) == ["usr/lib/libnew.so"]
        assert plan.updated == ["etc/app.conf"]
        assert "srv-mount" in plan.skipped
    staging.boot(state, root)
    staging.confirm(state, root)  # the agent confirms the healthy boot
    after = files(root)
    assert after["etc/app.conf"] == b"v1\n"
    assert "usr/lib/libnew.so" not in after
    for kept in (
        "data/customer.db",
        "data/new.db",
        "opt/vm/disk.img",
        "home/alice/notes.txt",
        "home/alice/later.txt",
        "usr/lib/unreadable.so",
        "srv-mount/x",
    ):
        assert kept in after, kept


def test_unknown_policy_removes_nothing(store: Store, tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    (root / "etc").mkdir(parents=True)
    (root / "etc/a.conf").write_text("v1\n")
    tree = snapshot(store, root, state, PolicySettings())
    (root / "etc/a.conf").write_text("v2\n")
    (root / "etc/b.conf").write_text("new\n")
    _tx, plan = stage(store, tree, root, state, None)
    assert plan.removed == [] and plan.updated == ["etc/a.conf"]


def test_dry_run_lists_and_changes_nothing(store: Store, tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    (root / "etc").mkdir(parents=True)
    (root / "etc/a.conf").write_text("v1\n")
    (root / "etc/gone.conf").write_text("deleted later\n")
    tree = snapshot(store, root, state, PolicySettings())
    (root / "etc/a.conf").write_text("v2\n")
    (root / "etc/gone.conf").unlink()
    (root / "etc/b.conf").write_text("new\n")
    before = files(root)
    scope = staging.revert_scope(RULES, True, PolicySettings(), root, state)
    plan = staging.plan_revert(store.get, tree, root, scope, store.keys.chunking).public()
    assert (plan["add"], plan["update"], plan["remove"]) == (
        ["etc/gone.conf"],
        ["etc/a.conf"],
        ["etc/b.conf"],
    )
    assert files(root) == before
    assert staging.pending(state, root) == []


# --- finding 2: all or nothing, even on a full disk ------------------------------------
def _small_endpoint(root: Path) -> None:
    (root / "usr/lib").mkdir(parents=True)
    (root / "home/u").mkdir(parents=True)
    for i in range(8):
        (root / f"usr/lib/libimportant{i}.so").write_bytes(os.urandom(200_000))
    (root / "home/u/big").write_bytes(os.urandom(400_000))


def test_revert_on_a_nearly_full_disk_deletes_nothing(
    store: Store, tmp_path: Path, tmpfs: Callable[[Path, str], Path]
) -> None:
    """The review's repro: a 3 MiB file system, 67% full, reverted to the snapshot it is at."""
    root = tmpfs(tmp_path / "root", "3M")
    state = root / "var/lib/lamina"
    _small_endpoint(root)
    (root / "filler").write_bytes(os.urandom(200_000))
    tree = snapshot(store, root, state, PolicySettings())
    before = files(root)
    _tx, plan = stage(store, tree, root, state, PolicySettings(), system_only=True)
    assert plan.ops == []  # already at the snapshot: nothing to stage, nothing to remove
    staging.boot(state, root)
    staging.confirm(state, root)  # the agent confirms the healthy boot
    assert files(root) == before


def test_revert_that_needs_more_space_than_free_is_refused(
    store: Store, tmp_path: Path, tmpfs: Callable[[Path, str], Path]
) -> None:
    root = tmpfs(tmp_path / "root", "3M")
    state = root / "var/lib/lamina"
    _small_endpoint(root)
    tree = snapshot(store, root, state, PolicySettings())
    for i in range(8):
        (root / f"usr/lib/libimportant{i}.so").write_bytes(os.urandom(200_000))
    (root / "filler").write_bytes(os.urandom(800_000))
    before = files(root)
    with pytest.raises(ConflictError, match=r"staging needs \d+ bytes, the endpoint has \d+ free"):
        stage(store, tree, root, state, PolicySettings())
    assert files(root) == before
    assert staging.pending(state, root) == []


def test_enospc_while_staging_fails_and_removes_the_half_staged_transaction(
    store: Store,
    tmp_path: Path,
    tmpfs: Callable[[Path, str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The free-space check passed (the disk filled up since): a real ENOSPC mid-staging."""
    root = tmpfs(tmp_path / "root", "3M")
    state = root / "var/lib/lamina"
    _small_endpoint(root)
    tree = snapshot(store, root, state, PolicySettings())
    for i in range(8):
        (root / f"usr/lib/libimportant{i}.so").write_bytes(os.urandom(200_000))
    (root / "filler").write_bytes(os.urandom(800_000))
    before = files(root)
    monkeypatch.setattr(staging_stage, "_check_space", lambda base, needed: None)
    with pytest.raises(ConflictError, match="staging failed, nothing was changed"):
        stage(store, tree, root, state, PolicySettings())
    assert staging.pending(state, root) == []
    assert not any((state / "staging").iterdir())
    staging.boot(state, root)
    staging.confirm(state, root)  # the agent confirms the healthy boot
    assert files(root) == before


# --- finding 6: boot applies a transaction completely or not at all --------------------
def _boot_endpoint(root: Path) -> None:
    for d in ("bin", "etc", "boot"):
        (root / d).mkdir(parents=True)
    (root / "bin/tool").write_text("tool v1\n")
    (root / "etc/app.conf").write_text("conf v1\n")


def test_boot_rolls_back_on_exdev_and_never_retries(
    store: Store, tmp_path: Path, tmpfs: Callable[[Path, str], Path]
) -> None:
    """The review's repro: /boot became a separate file system; the apply hits EXDEV."""
    root, state = tmp_path / "root", tmp_path / "state"
    _boot_endpoint(root)
    tree = snapshot(store, root, state, PolicySettings())
    (root / "bin/tool").write_text("tool v2\n")
    (root / "etc/app.conf").write_text("conf v2\n")
    (root / "boot/vmlinuz-2").write_text("kernel 2\n")
    tx, plan = stage(store, tree, root, state, PolicySettings())
    assert [op for op, _ in tx.journal["ops"]].count("remove") == 1
    assert plan.removed == ["boot/vmlinuz-2"]
    tmpfs(root / "boot", "1M")  # mounted at boot, after the staging
    (root / "boot/vmlinuz-2").write_text("kernel 2\n")
    [result] = staging.boot(state, root)
    assert "rolled back" in result["error"]
    assert (root / "bin/tool").read_text() == "tool v2\n"  # wholly old
    assert (root / "etc/app.conf").read_text() == "conf v2\n"
    assert (root / "boot/vmlinuz-2").read_text() == "kernel 2\n"
    [failed] = staging.pending(state, root)
    assert failed.journal["state"] == staging.FAILED
    assert staging.boot(state, root) == []  # not retried at every boot
    assert (root / "bin/tool").read_text() == "tool v2\n"


def test_staging_refuses_an_op_on_another_file_system(
    store: Store, tmp_path: Path, tmpfs: Callable[[Path, str], Path]
) -> None:
    from lamina.tree.paths import build_tree, index

    ref = tmp_path / "ref"
    _boot_endpoint(ref)
    (ref / "boot/vmlinuz-3").write_text("kernel 3\n")
    snap = backup(store, ref).snapshot
    entries = index(store.get, snap.root)
    with store.writer() as w:
        delta = build_tree(
            w.put,
            {"/boot/vmlinuz-3": entries["/boot/vmlinuz-3"]},
            {p: e for p, e in entries.items() if e.type == "dir"},
        )
    root, state = tmp_path / "root", tmp_path / "state"
    _boot_endpoint(root)
    tmpfs(root / "boot", "1M")
    with pytest.raises(ConflictError, match="another file system"):
        staging.stage_delta(store, delta, [], root, state, {"kind": "layers"})
    assert staging.pending(state, root) == []


def test_boot_refuses_a_symlinked_parent(store: Store, tmp_path: Path) -> None:
    """Apply never follows a link it did not make: a parent swapped for a symlink is refused."""
    root, state = tmp_path / "root", tmp_path / "state"
    (root / "etc/app").mkdir(parents=True)
    (root / "etc/app/app.conf").write_text("v1\n")
    tree = snapshot(store, root, state, PolicySettings())
    (root / "etc/app/app.conf").write_text("v2\n")
    stage(store, tree, root, state, PolicySettings())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "app.conf").write_text("not the endpoint's\n")
    shutil.rmtree(root / "etc/app")
    os.symlink(outside, root / "etc/app")
    [result] = staging.boot(state, root)
    assert "symlink" in result["error"]
    assert (outside / "app.conf").read_text() == "not the endpoint's\n"
    assert sorted(os.listdir(outside)) == ["app.conf"]


# --- metadata is part of the state ------------------------------------------------------
def test_revert_puts_back_a_stripped_file_capability(store: Store, tmp_path: Path) -> None:
    if shutil.which("setcap") is None:
        pytest.skip("setcap (libcap2-bin) is not installed")
    root, state = tmp_path / "root", tmp_path / "state"
    (root / "usr/bin").mkdir(parents=True)
    ping = root / "usr/bin/ping"
    ping.write_bytes(b"\x7fELF ping")
    subprocess.run(["setcap", "cap_net_raw+ep", str(ping)], check=True)
    tree = snapshot(store, root, state, PolicySettings())
    subprocess.run(["setcap", "-r", str(ping)], check=True)
    os.chmod(ping, 0o777)
    _tx, plan = stage(store, tree, root, state, PolicySettings())
    assert plan.updated == ["usr/bin/ping"]
    staging.boot(state, root)
    staging.confirm(state, root)  # the agent confirms the healthy boot
    caps = subprocess.run(["getcap", str(ping)], capture_output=True, text=True, check=True)
    assert "cap_net_raw" in caps.stdout
    assert os.stat(ping).st_mode & 0o7777 == 0o644


# --- the journal parser: any input is a journal or an IntegrityError --------------------
_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-2, 5)
    | st.sampled_from(
        ["swap", "remove", "meta", "staged", "applying", "failed", "a/b", "../x", "", "a//b"]
    ),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["v", "id", "state", "ops", "done", "summary", "meta", "old", "new", "x"]
            ),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(doc=_value, raw=st.binary(max_size=64))
def test_journal_parser_raises_only_integrity_errors(doc: object, raw: bytes) -> None:
    import json

    good = {
        "v": 1,
        "id": "t",
        "state": "staged",
        "ops": [["swap", "a/b"]],
        "done": 0,
        "summary": {},
    }
    for candidate in (
        json.dumps(doc).encode(),
        json.dumps({**good, **doc} if isinstance(doc, dict) else good).encode(),
        raw,
    ):
        with contextlib.suppress(IntegrityError):
            staging.parse_journal(candidate, "journal.json")


def test_a_damaged_journal_is_an_integrity_error(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    d = state / "staging" / "abc"
    d.mkdir(parents=True)
    (d / "journal.json").write_text(
        '{"v": 1, "id": "abc", "state": "staged", "ops": [["swap", "../etc"]], "done": 0, "summary": {}}'
    )
    with pytest.raises(IntegrityError, match="unsafe path"):
        staging.pending(state, root)


# --- finding 5: plans are made against the endpoint as it is now ------------------------
def test_layer_delivery_keeps_edits_made_after_the_last_sync(store: Store, tmp_path: Path) -> None:
    """The review's repro: the server plans from the last snapshot; the user edited since."""
    from lamina.layers.plan import LayerRef, make_plan
    from lamina.tree.paths import build_tree

    ref, root, state = tmp_path / "ref", tmp_path / "root", tmp_path / "state"
    for r in (ref, root):
        (r / "etc/sudoers.d").mkdir(parents=True)
        (r / "usr/bin").mkdir(parents=True)
        (r / "usr/lib").mkdir(parents=True)
    (ref / "etc/app.conf").write_text("layer v2\n")
    (ref / "etc/sudoers.d/local").write_text("layer's sudo rule\n")
    (ref / "usr/bin/tool").write_bytes(b"\0tool v2")
    (root / "etc/app.conf").write_text("v1\n")
    (root / "usr/bin/tool").write_bytes(b"\0tool v1")
    (root / "usr/lib/old.so").write_bytes(b"old library")
    layer = backup(store, ref).snapshot.root
    last = backup(store, root).snapshot.root
    with store.writer() as w:
        plan = make_plan(
            store.get,
            lambda d: w.put(BlobKind.DATA, d),
            last,
            [LayerRef("base:1", "base", last)],
            [LayerRef("base:2", "base", layer)],
            RULES,
        )
        delta = build_tree(w.put, plan.writes, plan.dirs)
    assert plan.removes == ["/usr/lib/old.so"]
    # After the last sync, before the delivery:
    (root / "usr/bin/tool").write_bytes(b"\0tool v1, patched locally")
    (root / "usr/lib/old.so").write_bytes(b"old library, patched locally")
    (root / "etc/sudoers.d/local").write_text("the admin's own rule\n")
    tx = staging.stage_delta(
        store,
        delta,
        plan.removes,
        root,
        state,
        {"kind": "layers"},
        expect=plan.expect,
        never_override=RULES.layers.never_override,
        chunking=store.keys.chunking,
    )
    assert tx.journal["summary"]["kept_aside"] == ["usr/bin/tool"]
    assert tx.journal["summary"]["blocked"] == ["etc/sudoers.d/local"]
    staging.boot(state, root)
    staging.confirm(state, root)  # the agent confirms the healthy boot
    assert (root / "etc/app.conf").read_text() == "layer v2\n"  # untouched since: updated
    assert (root / "usr/bin/tool").read_bytes() == b"\0tool v2"
    assert (root / "usr/bin/tool.lamina-user").read_bytes() == b"\0tool v1, patched locally"
    assert (root / "usr/lib/old.so").read_bytes() == b"old library, patched locally"
    assert (root / "etc/sudoers.d/local").read_text() == "the admin's own rule\n"


def _stanza(name: str, version: str) -> str:
    return f"Package: {name}\nStatus: install ok installed\nArchitecture: all\nVersion: {version}\n"


def test_package_database_merge_uses_the_live_status(store: Store, tmp_path: Path) -> None:
    """A package installed after the last sync stays listed after a layer update."""
    from lamina.layers.merge import parse_dpkg_status
    from lamina.layers.plan import LayerRef, make_plan
    from lamina.tree.paths import build_tree

    ref, root, state = tmp_path / "ref", tmp_path / "root", tmp_path / "state"
    for r in (ref, root):
        (r / "var/lib/dpkg").mkdir(parents=True)
    status = "var/lib/dpkg/status"
    (ref / status).write_text(_stanza("alpha", "2") + "\n" + _stanza("gamma", "1") + "\n")
    (root / status).write_text(_stanza("alpha", "1") + "\n" + _stanza("beta", "1") + "\n")
    layer = backup(store, ref).snapshot.root
    last = backup(store, root).snapshot.root
    with store.writer() as w:
        plan = make_plan(
            store.get,
            lambda d: w.put(BlobKind.DATA, d),
            last,
            [],
            [LayerRef("base:2", "base", layer)],
            builtin("debian"),
        )
        delta = build_tree(w.put, plan.writes, plan.dirs)
    # apt installed delta after the last sync:
    with open(root / status, "a") as f:
        f.write(_stanza("delta", "7") + "\n")
    staging.stage_delta(
        store,
        delta,
        plan.removes,
        root,
        state,
        {"kind": "layers"},
        expect=plan.expect,
        chunking=store.keys.chunking,
        dpkg_base=plan.dpkg_base,
    )
    staging.boot(state, root)
    staging.confirm(state, root)  # the agent confirms the healthy boot
    after = parse_dpkg_status((root / status).read_bytes())
    assert sorted(after) == ["alpha", "beta", "delta", "gamma"]
    assert after["alpha"].version == "2" and after["delta"].version == "7"
    assert not (root / (status + ".lamina-user")).exists()


def test_revert_puts_back_folder_metadata_and_undoes_it_on_a_crash(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder whose content is right but whose mode and owner are not is fixed in place."""
    root, state = tmp_path / "root", tmp_path / "state"
    (root / "etc/app").mkdir(parents=True)
    os.chmod(root / "etc/app", 0o750)
    (root / "etc/app/app.conf").write_text("v1\n")
    tree = snapshot(store, root, state, PolicySettings())
    os.chmod(root / "etc/app", 0o777)
    os.chown(root / "etc/app", 1234, 1234)
    tx, plan = stage(store, tree, root, state, PolicySettings())
    assert tx.journal["ops"] == [["meta", "etc/app"]] and plan.updated == ["etc/app"]
    with pytest.raises(staging.InjectedCrash):
        staging.boot(state, root, fail_after=1)
    [half] = staging.pending(state, root)
    staging.rollback(half, root)
    st = os.stat(root / "etc/app")
    assert (st.st_mode & 0o7777, st.st_uid) == (0o777, 1234)  # wholly old again
    staging.boot(state, root)
    staging.confirm(state, root)  # the agent confirms the healthy boot
    st = os.stat(root / "etc/app")
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o750, 0, 0)
