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
from pathlib import Path
from typing import Any

from lamina.agent.blobs import agent_blobs
from lamina.agent.facts import os_release
from lamina.agent.live import RevertScope
from lamina.agent.staging.stage import agent_folders, stage_tree
from lamina.agent.state import AgentState
from lamina.agent.sync import protected_area
from lamina.agent.transport import AgentClient
from lamina.errors import UsageError
from lamina.layers.rules import RuleSet, for_os, matches
from lamina.protocol.schemas import PolicySettings
from lamina.protocol.tasks import MigrateParams

#: Path classes staged (applied at boot) per mode; user data always streams afterwards.
BOOT_SET: dict[str, tuple[str, ...]] = {
    "full": ("system", "applications", "machine_identity"),
    "apps-data": ("applications",),
    "data": (),
    # A system laid down from layers (provision, OS migration): exactly the composed tree.
    "system": ("system", "applications"),
}
STREAMED = "user_data"


def migration_scope(
    rules: RuleSet,
    mode: str,
    hardware_bound: tuple[str, ...],
    policy: PolicySettings | None,
    root: Path,
    state_dir: Path,
) -> RevertScope:
    """What the boot set of a migration in ``mode`` may touch on this machine."""
    if mode not in BOOT_SET:
        raise UsageError(f"unknown migration mode {mode!r} (full, apps-data, data)")
    carried = BOOT_SET[mode]
    bound = hardware_bound or rules.migration.hardware_bound

    def keep(path: str) -> bool:
        return matches(bound, path) or rules.classify(path) not in carried

    protected = None
    if mode == "system":

        def owned_by_layers(path: str, is_dir: bool) -> bool:
            return not matches(bound, path) and rules.classify(path) in carried

        protected = owned_by_layers
    elif mode == "full" and policy is not None:
        exclude, _ = protected_area(policy, rules, root, state_dir)

        def protected_fn(path: str, is_dir: bool) -> bool:
            return not exclude(os.fsencode(path.lstrip("/")), is_dir)

        protected = protected_fn
    return RevertScope(keep, protected, agent_folders(state_dir, root))


def stage_migration(
    client: AgentClient, st: AgentState, state_dir: Path, params: MigrateParams
) -> dict[str, Any]:
    """Stage the boot set of a migration; the summary carries what streams after the reboot."""
    root = Path(st.root)
    rules = for_os(os_release(root))
    mode = params.mode
    policy = params.policy
    bound = tuple(params.hardware_bound)
    scope = migration_scope(rules, mode, bound, policy, root, state_dir)
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
        summary["stream"] = {"root": tree.hex(), "snapshot": params.snapshot}
    if params.versions is not None:
        summary["versions"] = list(params.versions)
        summary["labels"] = list(params.labels)
    tx, plan = stage_tree(blobs, tree, root, state_dir, scope, st.chunking, summary, client)
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
