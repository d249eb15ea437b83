"""A CVD laid onto this machine: the boot set staged now, the user data streamed after the reboot.

The plan is a revert's (``plan_revert``: the snapshot TREE against the live
root), with a scope set by the mode:

- ``full``: system, applications, identity (hostname, machine-id, SSH host
  keys, keytabs) are the CVD's; files of those classes the CVD never had are
  removed where its policy protected them.
- ``apps-data``: only the applications class (``/opt``, ``/usr/local``...) is
  laid over the new machine's own system; nothing is removed.
- ``data``: nothing is staged; only the user area streams in.
- ``system`` (provisioning, OS migration): the system and applications classes
  become exactly the composed layers' tree; identity and user data stay.

Whatever the mode, the hardware-bound paths of the rule set (``migration.
hardware_bound``: fstab, crypttab, bootloader, LVM devices, mdadm, network
bindings) and excluded paths stay the new machine's, and the user-data class
is not staged: it streams in after the reboot (``lamina.agent.stream``).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Any

from lamina.agent.blobs import agent_blobs
from lamina.agent.facts import os_release, read_dpkg_status
from lamina.agent.live import RevertPlan, RevertScope
from lamina.agent.staging.journal import Transaction, staging_root
from lamina.agent.staging.stage import agent_folders, stage_tree
from lamina.agent.state import AgentState
from lamina.agent.sync import protected_area
from lamina.agent.transport import AgentClient
from lamina.agent.treecache import TreeCache
from lamina.errors import LaminaError, UsageError
from lamina.layers.merge import (
    DPKG_STATUS,
    INSTALLED,
    Stanzas,
    carry,
    installed,
    parse_dpkg_status,
    render_dpkg_status,
)
from lamina.layers.rules import RuleSet, for_os, matches
from lamina.protocol.policies import PolicySettings
from lamina.protocol.tasks import MigrateParams
from lamina.store.keys import ChunkingSecret
from lamina.tree.model import decode_tree
from lamina.tree.paths import Load, lookup, read_file
from lamina.tree.restore_types import BlobSource

#: Path classes staged (applied at boot) per mode; user data always streams afterwards.
BOOT_SET: dict[str, tuple[str, ...]] = {
    "full": ("system", "applications", "machine_identity"),
    "apps-data": ("applications",),
    "data": (),
    # A system laid down from layers (provision, OS migration): exactly the composed tree.
    "system": ("system", "applications"),
}
STREAMED = "user_data"
#: The dpkg info folder: ``PKG[:ARCH].list`` names a package's files.
DPKG_INFO = "/var/lib/dpkg/info"
_GLOB = re.compile(r"[*?\[]")


def _class_roots(rules: RuleSet, classes: Collection[str]) -> tuple[str, ...]:
    """The fixed folders the classes' patterns start with (``/opt``, ``/usr/local``)."""
    fixed = (
        _GLOB.split(pat, 1)[0].rstrip("/") for cls in classes for pat in rules.classes.get(cls, ())
    )
    return tuple(root for root in fixed if root)


def migration_scope(
    rules: RuleSet,
    mode: str,
    hardware_bound: tuple[str, ...],
    policy: PolicySettings | None,
    root: Path,
    state_dir: Path,
    extra: frozenset[str] = frozenset(),
) -> RevertScope:
    """What the boot set of a migration in ``mode`` may touch on this machine.

    ``extra``: paths of other classes laid over too (the files of user-installed
    packages in apps-data mode). In apps-data mode the folders on the way to the
    applications class and to ``extra`` (``/usr`` to ``/usr/local``) are walked
    through, not taken: :func:`descend_only` says which ops on them to drop."""
    if mode not in BOOT_SET:
        raise UsageError(f"unknown migration mode {mode!r} (full, apps-data, data)")
    carried = BOOT_SET[mode]
    bound = hardware_bound or rules.migration.hardware_bound
    through = _through(rules, mode, extra)

    def keep(path: str) -> bool:
        if matches(bound, path):
            return True
        if path in extra or path in through:
            return False
        return rules.classify(path) not in carried

    protected = None
    if mode == "system":

        def owned_by_layers(path: str, is_dir: bool) -> bool:
            return not matches(bound, path) and rules.classify(path) in carried

        protected = owned_by_layers
    elif mode == "full" and policy is not None:
        exclude = protected_area(policy, rules, root, state_dir).exclude

        def protected_fn(path: str, is_dir: bool) -> bool:
            return not exclude(os.fsencode(path.lstrip("/")), is_dir)

        protected = protected_fn
    return RevertScope(keep, protected, agent_folders(state_dir, root))


def _through(rules: RuleSet, mode: str, extra: Collection[str]) -> frozenset[str]:
    """The folders an apps-data migration walks through to reach what it lays over."""
    if mode != "apps-data":
        return frozenset()
    out: set[str] = set()
    for p in (*_class_roots(rules, BOOT_SET[mode]), *extra):
        parts = p.strip("/").split("/")
        out.update("/" + "/".join(parts[:i]) for i in range(1, len(parts)))
    return frozenset(out)


def descend_only(rules: RuleSet, mode: str, extra: Collection[str]) -> frozenset[str]:
    """Relative paths of the folders walked through: their owner, mode or removal is not
    the migration's to change (one this machine lacks is put in place whole)."""
    return frozenset(p.lstrip("/") for p in _through(rules, mode, extra))


def _read(load: Load, tree: bytes, path: str) -> bytes | None:
    e = lookup(load, tree, [os.fsencode(p) for p in path.strip("/").split("/")])
    if e is None or e.type != "file":
        return None
    try:
        return read_file(load, e)
    except LaminaError:
        return None


def user_packages(
    load: Load,
    tree: bytes,
    root: Path,
    only: Collection[str] | None = None,
    conflicts: list[dict[str, str]] | None = None,
) -> tuple[Stanzas, frozenset[str], bytes | None]:
    """The CVD's packages this machine does not have (installed by its user, not by the
    new machine's OS): their stanzas, the files to lay over (each in the package's
    ``.list`` and its ``info/`` files, absent here) and the live database merged
    with them. Nothing when either side has no readable dpkg database.

    ``only``: the packages the server found user-installed (the others came with the
    CVD's layers); ``conflicts`` gets one row per such package this machine has at
    another version (this machine's wins: ``layers.merge.carry``, the rule the dry run
    applies to the packages the pending agent reported)."""
    live_bytes = read_dpkg_status(root)
    ours_bytes = _read(load, tree, DPKG_STATUS)
    if live_bytes is None or ours_bytes is None:
        return {}, frozenset(), None
    try:
        live, ours = parse_dpkg_status(live_bytes), parse_dpkg_status(ours_bytes)
    except LaminaError:
        return {}, frozenset(), None
    wanted = {
        k: s for k, s in ours.items() if s.status == INSTALLED and (only is None or k in only)
    }
    carried, found = carry(wanted, installed(live))
    if conflicts is not None:
        conflicts.extend(found)
    info = lookup(load, tree, [os.fsencode(p) for p in DPKG_INFO.strip("/").split("/")])
    info_names = []
    if info is not None and info.subtree is not None:
        info_names = [os.fsdecode(e.name) for e in decode_tree(load(info.subtree))]
    paths: set[str] = set()
    for key, s in carried.items():
        for stem in {s.name, key}:
            for n in info_names:
                if n.startswith(stem + ".") and "/" not in n:
                    paths.add(f"{DPKG_INFO}/{n}")
            listed = _read(load, tree, f"{DPKG_INFO}/{stem}.list")
            for line in (listed or b"").decode(errors="surrogateescape").splitlines():
                if line.startswith("/") and line != "/." and "/../" not in line + "/":
                    paths.add(line.rstrip("/"))
    # Only files this machine lacks: a folder stays its own, a file another package
    # of its system owns is never replaced.
    lay = frozenset(
        p
        for p in paths
        if p.startswith("/")
        and not os.path.lexists(root / p.lstrip("/"))
        and (e := lookup(load, tree, [os.fsencode(x) for x in p.strip("/").split("/")])) is not None
        and e.type != "dir"
    )
    # A package dpkg knows here but has not installed (removed, its configuration kept)
    # gives way to the carried one: one stanza a package.
    names = {s.name for s in carried.values()}
    merged = {k: s for k, s in live.items() if s.name not in names}
    merged.update(carried)
    return carried, lay, render_dpkg_status(merged) if carried else None


def _stage_status(tx: Transaction, root: Path, data: bytes) -> None:
    """The live package database with the carried packages' stanzas, staged as one swap."""
    rel = DPKG_STATUS.lstrip("/")
    st = os.lstat(root / rel)
    staged = tx.new / rel
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(data)
    os.chown(staged, st.st_uid, st.st_gid)
    os.chmod(staged, stat.S_IMODE(st.st_mode))
    tx.journal["ops"].append(["swap", rel])
    tx.save()


def stage_boot_set(
    blobs: BlobSource,
    tree: bytes,
    root: Path,
    state_dir: Path,
    mode: str,
    hardware_bound: tuple[str, ...],
    policy: PolicySettings | None,
    chunking: ChunkingSecret,
    summary: dict[str, Any],
    client: AgentClient | None = None,
    only: Collection[str] | None = None,
) -> tuple[Transaction, RevertPlan]:
    """Stage what a migration in ``mode`` lays down before the reboot. In apps-data mode
    the CVD's user-installed packages (:func:`user_packages`) come with the applications:
    their files, and their stanzas merged into this machine's package database."""
    rules = for_os(os_release(root))
    with TreeCache(blobs, staging_root(state_dir, root), chunking.id_key) as trees:
        extra: frozenset[str] = frozenset()
        status: bytes | None = None
        if mode == "apps-data":
            conflicts: list[dict[str, str]] = []
            carried, extra, status = user_packages(trees.get, tree, root, only, conflicts)
            if carried:
                summary["packages_carried"] = {s.name: s.version for s in carried.values()}
            if conflicts:
                summary["package_conflicts"] = conflicts
        scope = migration_scope(rules, mode, hardware_bound, policy, root, state_dir, extra)
        skip = descend_only(rules, mode, extra)
        tx, plan = stage_tree(
            blobs, tree, root, state_dir, scope, chunking, summary,
            skip=skip, client=client, trees=trees,
        )  # fmt: skip
    if status is not None:
        _stage_status(tx, root, status)
    return tx, plan


def stage_migration(
    client: AgentClient, st: AgentState, state_dir: Path, params: MigrateParams
) -> dict[str, Any]:
    """Stage the boot set of a migration; the summary carries what streams after the reboot."""
    root = Path(st.root)
    mode = params.mode
    blobs = agent_blobs(client, st.chunking.id_key)
    tree = bytes.fromhex(params.root)
    summary: dict[str, Any] = {
        "kind": "migration",
        "mode": mode,
        "snapshot": params.snapshot,
        "packs": list(params.packs),
        "rebuild_initramfs": params.rebuild_initramfs,
    }
    if mode != "system":  # the user data streams in after the reboot
        stream = params.stream_root or tree.hex()
        summary["stream"] = {"root": stream, "snapshot": params.snapshot}
    if params.base:  # apps-data onto a new base layer: the system becomes the composed tree
        summary["base"] = params.base
    if params.versions is not None:
        summary["versions"] = list(params.versions)
        summary["labels"] = list(params.labels)
    tx, plan = stage_boot_set(
        blobs,
        tree,
        root,
        state_dir,
        "system" if params.base else mode,
        tuple(params.hardware_bound),
        params.policy,
        st.chunking,
        summary,
        client,
        params.user_packages,
    )
    tx.journal["summary"]["downloaded_bytes"] = blobs.fetched_bytes
    tx.save()
    return {
        "transaction": tx.journal["id"],
        "operations": len(tx.journal["ops"]),
        "mode": mode,
        "downloaded_bytes": blobs.fetched_bytes,
        "counts": plan.public()["counts"],
        "space_needed": plan.space_needed,
    }
