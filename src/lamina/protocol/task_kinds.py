"""Task kinds and states, apart from their parameters' models (``protocol.tasks``): an
agent cycle with no work reads these alone, and builds none of the models."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["TaskKind", "TaskState"]


class TaskKind(StrEnum):
    SYNC = "sync"
    RESTORE = "restore"
    REVERT = "revert"
    LAYER_APPLY = "layer-apply"
    MIGRATE = "migrate"
    # Run by the server itself on its store (``services/store_ops.py``), never by an agent.
    STORE_CHECK = "store-check"
    STORE_GC = "store-gc"
    STORE_STATS = "store-stats"


class TaskState(StrEnum):
    """queued → running → done | failed, or → waiting (staged for the next boot) → done | failed;
    queued and waiting may become cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
