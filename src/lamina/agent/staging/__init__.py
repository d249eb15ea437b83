"""Staged transactions: prepared now, applied atomically by ``lamina agent boot``.

- ``journal``: a transaction's folder, its journal (format and states), listing and dropping.
- ``stage``: reverts and layer deliveries planned against the live root and staged.
- ``migrate``: a CVD laid onto new hardware (boot set staged, user data streamed later).
- ``apply``: apply at boot with rollback, the boot confirmation, the unconfirmed-boot rollback.

The public names are re-exported here: ``from lamina.agent import staging`` is the
one way the rest of the agent uses them. ``journal`` and ``apply`` are loaded with the
package; ``stage`` and ``migrate`` (the tree, layer and HTTP code) on first use of one
of their names, so that ``lamina agent boot``, which runs before services start, and
``lamina agent status`` load neither (tests/cli/test_startup.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from lamina.agent.live import RevertPlan, plan_revert
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

#: The names loaded on first use, and their modules.
_LAZY = {
    "RevertPlan": "lamina.agent.live",
    "plan_revert": "lamina.agent.live",
    "BOOT_SET": "lamina.agent.staging.migrate",
    "migration_scope": "lamina.agent.staging.migrate",
    "stage_migration": "lamina.agent.staging.migrate",
    "stage_boot_set": "lamina.agent.staging.migrate",
    **dict.fromkeys(
        (
            "revert_scope",
            "seed_paths",
            "stage_delta",
            "stage_layers",
            "stage_revert",
            "stage_tree",
            "system_only_keep",
        ),
        "lamina.agent.staging.stage",
    ),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
