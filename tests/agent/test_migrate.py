"""A migration's apply on the new machine, without a server: the boot set staged from the
old machine's snapshot, a crash at every step, then the user data streamed in."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lamina.agent import staging
from lamina.agent.facts import package_facts
from lamina.agent.stream import stream_user_data
from lamina.db.stores import StoreLocation, init_store
from lamina.layers.merge import parse_dpkg_status
from lamina.layers.rules import builtin
from lamina.protocol.schemas import PolicySettings
from lamina.server.services.migration_packages import on_new_machine
from lamina.store.repository import Store
from lamina.tree.backup import backup
from lamina.tree.paths import walk
from tests.agent.test_treecache import Reads

RULES = builtin("debian")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return init_store(StoreLocation(data=tmp_path / "data"))


def _machine(root: Path, host: str, uuid: str, nic: str, mac: str) -> Path:
    """A small Debian-like root: one OS, and what is this machine's own."""
    for d in ("etc/ssh", "etc/network", "usr/bin", "usr/lib", "boot/grub", "home", "var/lib/dpkg"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    (root / "usr/bin/ls").write_bytes(b"\x7fELF ls" * 1000)
    (root / "usr/lib/libc.so").write_bytes(b"libc" * 5000)
    (root / "etc/hostname").write_text(host + "\n")
    (root / "etc/machine-id").write_text(f"{host:0>32}\n")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text(f"key of {host}\n")
    (root / "etc/fstab").write_text(f"UUID={uuid} / ext4 defaults 0 1\n")
    (root / "boot/grub/grub.cfg").write_text(f"linux /vmlinuz root=UUID={uuid}\n")
    (root / "etc/network/interfaces").write_text(f"auto {nic}\niface {nic} inet dhcp\n")
    (root / "etc/udev").mkdir(exist_ok=True)
    (root / "etc/udev/rules.d").mkdir(exist_ok=True)
    (root / "etc/udev/rules.d/70-persistent-net.rules").write_text(
        f'SUBSYSTEM=="net", ATTR{{address}}=="{mac}", NAME="{nic}"\n'
    )
    (root / "var/lib/dpkg/status").write_text(
        "Package: coreutils\nStatus: install ok installed\nVersion: 9.1\n"
    )
    return root


@pytest.fixture
def machines(store: Store, tmp_path: Path) -> tuple[bytes, Path, Path]:
    old = _machine(tmp_path / "old", "desk-01", "1111-aaaa", "enp0s3", "52:54:00:00:00:01")
    (old / "usr/bin/user-tool").write_text("#!/bin/sh\necho installed by the user\n")
    with open(old / "var/lib/dpkg/status", "a") as f:
        f.write("\nPackage: user-tool\nStatus: install ok installed\nVersion: 1.0\n")
    (old / "home/ann").mkdir()
    (old / "home/ann/thesis.txt").write_text("ann's thesis\n" * 100)
    (old / "home/ann/notes.txt").write_text("notes from the old machine\n")
    (old / "opt/app").mkdir(parents=True)
    (old / "opt/app/run").write_text("app\n")
    tree = backup(store, old).snapshot.root
    new = _machine(tmp_path / "new", "fresh", "2222-bbbb", "eno1", "52:54:00:00:00:99")
    (new / "usr/bin/installer-only").write_text("left by the minimal install\n")
    (new / "home/ann").mkdir()
    (new / "home/ann/notes.txt").write_text("written on the new machine already\n")
    return tree, old, new


def _stage(store: Store, tree: bytes, root: Path, state: Path, mode: str) -> staging.Transaction:
    scope = staging.migration_scope(RULES, mode, (), PolicySettings(), root, state)
    tx, _plan = staging.stage_tree(
        store, tree, root, state, scope, store.keys.chunking, {"kind": "migration"}
    )
    return tx


def _snapshot_of(root: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and "lamina" not in p.parts:
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def _assert_migrated_boot_set(new: Path) -> None:
    assert (new / "etc/hostname").read_text() == "desk-01\n"  # identity: the old machine's
    assert (new / "etc/ssh/ssh_host_ed25519_key").read_text() == "key of desk-01\n"
    assert (new / "etc/fstab").read_text() == "UUID=2222-bbbb / ext4 defaults 0 1\n"  # hardware
    assert "2222-bbbb" in (new / "boot/grub/grub.cfg").read_text()
    assert "eno1" in (new / "etc/network/interfaces").read_text()
    assert "52:54:00:00:00:99" in (new / "etc/udev/rules.d/70-persistent-net.rules").read_text()
    assert (new / "usr/bin/user-tool").exists()  # a user-installed package, with its dpkg entry
    assert "Package: user-tool" in (new / "var/lib/dpkg/status").read_text()
    assert not (new / "usr/bin/installer-only").exists()  # the CVD's system, not the installer's
    assert (new / "opt/app/run").read_text() == "app\n"


def test_full_migration_survives_a_crash_at_every_step(
    store: Store,
    machines: tuple[bytes, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tree, _old, new = machines
    state = new / "var/lib/lamina"
    pristine = tmp_path / "pristine"
    shutil.copytree(new, pristine, symlinks=True)
    before = _snapshot_of(new)
    tx = _stage(store, tree, new, state, "full")
    steps = len(tx.journal["ops"])
    assert steps >= 7
    assert not any(rel.startswith("home") for _, rel in tx.journal["ops"])  # streamed later
    saved = tmp_path / "tx"
    shutil.copytree(tx.path, saved, symlinks=True)
    for n in range(steps + 1):
        shutil.rmtree(new)
        shutil.copytree(pristine, new, symlinks=True)
        shutil.copytree(saved, tx.path, symlinks=True)
        with pytest.raises(staging.InjectedCrash):
            staging.boot(state, new, fail_after=n)
        # The machine was cut mid-apply: either it is still as it was, or the next boot
        # finishes the job. Rolling back instead must give the machine as it was.
        if n % 2:
            [half] = staging.pending(state, new)
            staging.rollback(half, new)
            assert _snapshot_of(new) == before, f"rollback after a crash at step {n}"
            shutil.rmtree(half.path)
            continue
        staging.boot(state, new)
        _assert_migrated_boot_set(new)
        assert staging.confirm(state, new)
        shutil.rmtree(tx.path, ignore_errors=True)


def test_user_data_streams_in_and_never_overwrites(
    store: Store, machines: tuple[bytes, Path, Path]
) -> None:
    tree, _old, new = machines
    state = new / "var/lib/lamina"
    _stage(store, tree, new, state, "full")
    staging.boot(state, new)
    staging.confirm(state, new)
    seen = []
    prog = stream_user_data(store, tree, new, RULES, store.keys.chunking, seen.append)
    assert prog.done and prog.files_total == 2 and prog.kept_local == 1
    assert (new / "home/ann/thesis.txt").read_text() == "ann's thesis\n" * 100
    assert (new / "home/ann/notes.txt").read_text() == "written on the new machine already\n"
    assert seen[-1].files_done == 1
    again = stream_user_data(store, tree, new, RULES, store.keys.chunking)  # resumed: no-op
    assert again.done and again.files_done == 1 and again.kept_local == 1


def test_data_mode_keeps_the_new_machine_as_it_is(
    store: Store, machines: tuple[bytes, Path, Path]
) -> None:
    tree, _old, new = machines
    state = new / "var/lib/lamina"
    tx = _stage(store, tree, new, state, "data")
    assert tx.journal["ops"] == []
    staging.boot(state, new)
    staging.confirm(state, new)
    stream_user_data(store, tree, new, RULES, store.keys.chunking)
    assert (new / "etc/hostname").read_text() == "fresh\n"  # identity stays the new machine's
    assert not (new / "usr/bin/user-tool").exists()
    assert (new / "home/ann/thesis.txt").exists()


def test_apps_data_mode_lays_applications_over_the_new_system(
    store: Store, machines: tuple[bytes, Path, Path]
) -> None:
    tree, _old, new = machines
    state = new / "var/lib/lamina"
    _stage(store, tree, new, state, "apps-data")
    staging.boot(state, new)
    assert (new / "opt/app/run").read_text() == "app\n"
    assert (new / "etc/hostname").read_text() == "fresh\n"
    assert (new / "usr/bin/installer-only").exists()  # its own system stays
    assert os.path.exists(new / "usr/bin/ls")


def test_apps_data_mode_carries_user_installed_packages_and_usr_local(
    store: Store, machines: tuple[bytes, Path, Path]
) -> None:
    """The user's own package (its files outside the applications class, its dpkg entries)
    and /usr/local come over; the new machine's own packages and system stay."""
    _tree, old, new = machines
    info = old / "var/lib/dpkg/info"
    info.mkdir()
    (info / "user-tool.list").write_text(
        "/.\n/usr\n/usr/bin\n/usr/bin/user-tool\n/usr/share/user-tool/data\n"
    )
    (info / "user-tool.md5sums").write_text("0123  usr/bin/user-tool\n")
    (info / "coreutils.list").write_text("/.\n/usr/bin/ls\n")
    (old / "usr/share/user-tool").mkdir(parents=True)
    (old / "usr/share/user-tool/data").write_text("tool data\n")
    (old / "usr/bin/ls").write_bytes(b"the old machine's own ls")  # its system: not carried
    (old / "usr/local/bin").mkdir(parents=True)
    (old / "usr/local/bin/report").write_text("#!/bin/sh\necho local script\n")
    tree = backup(store, old).snapshot.root
    (new / "var/lib/dpkg/info").mkdir()  # as on every dpkg system
    (new / "var/lib/dpkg/info/new-only.list").write_text("/.\n")
    (new / "var/lib/dpkg/status").write_text(
        "Package: coreutils\nStatus: install ok installed\nVersion: 9.4\n\n"
        "Package: new-only\nStatus: install ok installed\nVersion: 2.0\n"
    )
    state = new / "var/lib/lamina"
    summary: dict[str, object] = {"kind": "migration"}
    tx, _plan = staging.stage_boot_set(
        store, tree, new, state, "apps-data", (), PolicySettings(), store.keys.chunking, summary
    )
    assert summary["packages_carried"] == {"user-tool": "1.0"}
    assert not any(
        op == "meta" and rel in ("usr", "var", "var/lib") for op, rel in tx.journal["ops"]
    )
    staging.boot(state, new)
    assert (new / "usr/bin/user-tool").read_text() == "#!/bin/sh\necho installed by the user\n"
    assert (new / "usr/share/user-tool/data").read_text() == "tool data\n"
    assert (new / "var/lib/dpkg/info/user-tool.list").exists()
    assert (new / "var/lib/dpkg/info/user-tool.md5sums").exists()
    assert not (new / "var/lib/dpkg/info/coreutils.list").exists()  # not a carried package
    assert (new / "var/lib/dpkg/info/new-only.list").exists()
    assert (new / "usr/local/bin/report").exists()  # applications under /usr
    assert (new / "usr/bin/ls").read_bytes() == b"\x7fELF ls" * 1000  # the new machine's own
    status = (new / "var/lib/dpkg/status").read_text()
    assert "Version: 9.4" in status and "Package: new-only" in status  # its own stay
    assert "Package: user-tool" in status and "Version: 9.1" not in status
    assert (new / "usr/bin/installer-only").exists() and (
        new / "etc/hostname"
    ).read_text() == "fresh\n"
    # A rollback takes it all back out, the database included.
    [applied] = staging.pending(state, new)
    staging.rollback(applied, new)
    assert not (new / "usr/bin/user-tool").exists()
    assert "user-tool" not in (new / "var/lib/dpkg/status").read_text()


def test_apps_data_carries_only_the_packages_the_server_named_and_reports_conflicts(
    store: Store, machines: tuple[bytes, Path, Path]
) -> None:
    """The server names the user's packages (the others came with the CVD's layers): one
    from a layer is never carried, and one this machine has at another version keeps
    this machine's version and is reported."""
    _tree, old, new = machines
    with open(old / "var/lib/dpkg/status", "a") as f:
        f.write("\nPackage: from-layer\nStatus: install ok installed\nVersion: 3.0\n")
    (old / "usr/bin/from-layer").write_text("a layer's tool\n")
    (old / "var/lib/dpkg/info").mkdir()
    (old / "var/lib/dpkg/info/from-layer.list").write_text("/.\n/usr/bin/from-layer\n")
    (old / "var/lib/dpkg/info/user-tool.list").write_text("/.\n/usr/bin/user-tool\n")
    tree = backup(store, old).snapshot.root
    (new / "var/lib/dpkg/status").write_text(
        "Package: coreutils\nStatus: install ok installed\nVersion: 9.4\n"
    )
    state = new / "var/lib/lamina"
    summary: dict[str, object] = {"kind": "migration"}
    staging.stage_boot_set(
        store, tree, new, state, "apps-data", (), PolicySettings(), store.keys.chunking,
        summary, only=["user-tool", "coreutils"],
    )  # fmt: skip
    assert summary["packages_carried"] == {"user-tool": "1.0"}
    assert summary["package_conflicts"] == [
        {"package": "coreutils", "cvd": "9.1", "new": "9.4", "wins": "new"}
    ]
    staging.boot(state, new)
    assert (new / "usr/bin/user-tool").exists() and not (new / "usr/bin/from-layer").exists()
    status = (new / "var/lib/dpkg/status").read_text()
    assert "Package: user-tool" in status and "from-layer" not in status
    assert "Version: 9.4" in status and "Version: 9.1" not in status


def test_the_dry_run_foresees_from_the_reported_packages_what_staging_carries(
    store: Store, machines: tuple[bytes, Path, Path]
) -> None:
    """The packages a pending agent reports (facts format 4), read by the server's rule,
    say before anything is sent exactly what staging then carries and which conflicts
    it reports: a package at another version here keeps this machine's, one removed
    here with its configuration kept is carried over it, and a machine without a
    readable database takes none."""
    _tree, old, new = machines
    with open(old / "var/lib/dpkg/status", "a") as f:
        f.write("\nPackage: same\nStatus: install ok installed\nVersion: 2\n")
    tree = backup(store, old).snapshot.root
    user = parse_dpkg_status((old / "var/lib/dpkg/status").read_bytes())  # all the user's
    state = new / "var/lib/lamina"

    def stage() -> dict[str, object]:
        summary: dict[str, object] = {"kind": "migration"}
        staging.stage_boot_set(
            store, tree, new, state, "apps-data", (), PolicySettings(), store.keys.chunking,
            summary, only=sorted(user),
        )  # fmt: skip
        return summary

    (new / "var/lib/dpkg/status").unlink()
    assert package_facts(new) == {"database": "none", "installed": []}
    carried, conflicts, warning = on_new_machine(user, package_facts(new))
    assert (carried, conflicts) == ({}, []) and warning and "no package is carried" in warning
    summary = stage()
    assert "packages_carried" not in summary and "package_conflicts" not in summary

    (new / "var/lib/dpkg/status").write_text(
        "Package: coreutils\nStatus: install ok installed\nVersion: 9.4\n\n"
        "Package: same\nStatus: install ok installed\nVersion: 2\n\n"
        "Package: user-tool\nStatus: deinstall ok config-files\nVersion: 0.5\n"
    )
    carried, conflicts, warning = on_new_machine(user, package_facts(new))
    assert warning is None
    summary = stage()  # supersedes the transaction staged above
    assert {s.name: s.version for s in carried.values()} == summary["packages_carried"]
    assert summary["packages_carried"] == {"user-tool": "1.0"}
    assert conflicts == summary["package_conflicts"]
    assert conflicts == [{"package": "coreutils", "cvd": "9.1", "new": "9.4", "wins": "new"}]
    staging.boot(state, new)
    after = parse_dpkg_status((new / "var/lib/dpkg/status").read_bytes())
    assert {k: (s.version, s.status) for k, s in after.items()} == {
        "coreutils": ("9.4", "install ok installed"),
        "same": ("2", "install ok installed"),
        "user-tool": ("1.0", "install ok installed"),  # one stanza: the removed one gave way
    }


def test_each_folder_listing_is_downloaded_once(
    store: Store, machines: tuple[bytes, Path, Path]
) -> None:
    """The staging plans, then restores what it swaps, from listings it fetched once;
    the stream after the reboot reads only the folders that can hold user data."""
    tree, _old, new = machines
    trees = {tree} | {e.subtree for _, e in walk(store.get, tree) if e.subtree is not None}
    src = Reads(store)
    state = new / "var/lib/lamina"
    scope = staging.migration_scope(RULES, "full", (), PolicySettings(), new, state)
    _tx, plan = staging.stage_tree(
        src, tree, new, state, scope, store.keys.chunking, {"kind": "migration"}
    )
    assert any(op == "swap" for op, _ in plan.ops)
    assert max(src.reads[t] for t in trees) == 1
    staging.boot(state, new)
    staging.confirm(state, new)
    after = Reads(store)
    prog = stream_user_data(after, tree, new, RULES, store.keys.chunking)
    assert prog.done and (prog.files_total, prog.kept_local) == (2, 1)
    by_path = {p: e.subtree for p, e in walk(store.get, tree) if e.subtree is not None}
    read = {p for p, t in by_path.items() if after.reads[t]}
    assert {"/home", "/home/ann"} <= read
    assert not read & {"/usr", "/usr/bin", "/etc", "/etc/ssh", "/opt"}  # no user data there
