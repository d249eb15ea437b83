"""Staged transactions: prepared now, applied atomically by ``lamina agent boot``.

- ``journal``: a transaction's folder, its journal (format and states), listing and dropping.
- ``stage``: reverts and layer deliveries planned against the live root and staged.
- ``migrate``: a CVD laid onto new hardware (boot set staged, user data streamed later).
- ``apply``: apply at boot with rollback, the boot confirmation, the unconfirmed-boot rollback.

The public names are re-exported here: ``from lamina.agent import staging`` is the
one way the rest of the agent uses them.
"""

from __future__ import annotations

from lamina.agent.live import RevertPlan, plan_revert
from lamina.agent.staging.apply import (
    MAX_UNCONFIRMED_BOOTS,
    apply,
    awaiting_confirmation,
    boot,
    confirm,
    rollback,
)
from lamina.agent.staging.journal import (
    APPLIED,
    APPLYING,
    COMMITTED,
    FAILED,
    JOURNAL_VERSION,
    READABLE_JOURNALS,
    STAGED,
    STATES,
    InjectedCrash,
    Transaction,
    drop,
    new_transaction,
    parse_journal,
    pending,
    staging_root,
)
from lamina.agent.staging.migrate import (
    BOOT_SET,
    migration_scope,
    stage_boot_set,
    stage_migration,
)
from lamina.agent.staging.stage import (
    revert_scope,
    seed_paths,
    stage_delta,
    stage_layers,
    stage_revert,
    stage_tree,
    system_only_keep,
)

__all__ = [
    "APPLIED",
    "APPLYING",
    "BOOT_SET",
    "COMMITTED",
    "FAILED",
    "JOURNAL_VERSION",
    "MAX_UNCONFIRMED_BOOTS",
    "READABLE_JOURNALS",
    "STAGED",
    "STATES",
    "InjectedCrash",
    "RevertPlan",
    "Transaction",
    "apply",
    "awaiting_confirmation",
    "boot",
    "confirm",
    "drop",
    "migration_scope",
    "new_transaction",
    "parse_journal",
    "pending",
    "plan_revert",
    "revert_scope",
    "rollback",
    "seed_paths",
    "stage_boot_set",
    "stage_delta",
    "stage_layers",
    "stage_migration",
    "stage_revert",
    "stage_tree",
    "staging_root",
    "system_only_keep",
]
