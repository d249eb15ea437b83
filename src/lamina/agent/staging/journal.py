"""The staging journal: one transaction's folder, its ``journal.json``, and its states.

A transaction lives in ``STATE/staging/<id>/`` on the endpoint's file system:

    new/        the files to put in place, already complete
    old/        what they replace, moved aside during apply (kept until the boot is confirmed)
    journal.json  {"v": 3, "id", "state", "ops": [[op, path], ...], "done": n, "summary",
                   "meta"?, "error"?, "rolled_back"?, "boots"?, "applied_at"?,
                   "depmod"?: [KVER], "depmod_done"?: {KVER: outcome}}

``depmod`` lists the kernels whose modules the ops touch (``lamina.agent.depmod``):
``agent boot`` runs depmod for them after the apply and after a rollback, and
records ``depmod_done``; an applied transaction without it gets it at the next boot.

``state``: ``staged`` → ``applying`` → ``applied`` → ``committed`` (the agent
confirmed a healthy boot), or ``failed`` when an op failed, or when the machine
booted twice after the apply without confirming, and every op was undone.
``boots`` counts the boots an ``applied`` transaction has seen unconfirmed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from lamina.agent.state_files import write_json_atomic
from lamina.errors import IntegrityError, LaminaError, UsageError
from lamina.tree.names import check_name

#: 2 added the "failed" state with "error" and "rolled_back"; 3 adds the "applied" state
#: (awaiting boot confirmation, ``old/`` kept) and its "boots" count.
JOURNAL_VERSION = 3
READABLE_JOURNALS = (1, 2, 3)
STAGED, APPLYING, APPLIED, COMMITTED, FAILED = (
    "staged",
    "applying",
    "applied",
    "committed",
    "failed",
)
STATES = (STAGED, APPLYING, APPLIED, COMMITTED, FAILED)


class InjectedCrash(Exception):
    """Raised by the test hook to stop an apply dead, like a power cut."""


class Transaction:
    """A staged transaction's folder and its journal (a plain class: ``agent boot`` loads
    no ``dataclasses``, whose import of ``inspect`` is a tenth of its start-up)."""

    __slots__ = ("journal", "path")

    def __init__(self, path: Path, journal: dict[str, Any]) -> None:
        self.path = path
        self.journal = journal

    def __repr__(self) -> str:
        return f"Transaction({self.path!r}, {self.journal!r})"

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


def parse_journal(raw: bytes, where: str) -> dict[str, Any]:
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
    boots = doc.get("boots", 0)
    if isinstance(boots, bool) or not isinstance(boots, int) or not 0 <= boots < 1000:
        raise IntegrityError(f"{where}: expected a boot count, found {boots!r:.20}")
    if not isinstance(doc.get("summary"), dict):
        raise IntegrityError(f"{where}: expected a summary object")
    kernels = doc.get("depmod", [])
    if not isinstance(kernels, list) or not all(isinstance(k, str) for k in kernels):
        raise IntegrityError(f"{where}: expected a list of kernel releases for depmod")
    if not isinstance(doc.get("depmod_done", {}), dict):
        raise IntegrityError(f"{where}: expected depmod_done as an object")
    meta = doc.get("meta") or {}
    if not isinstance(meta, dict):
        raise IntegrityError(f"{where}: expected a meta object")
    for op in ops:
        if op[0] == "meta":
            m = meta.get(op[1])
            if not isinstance(m, dict) or not all(_valid_meta(m.get(k)) for k in ("old", "new")):
                raise IntegrityError(f"{where}: no valid metadata for the meta op on {op[1]!r:.80}")
    return doc


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


def new_transaction(state_dir: Path, root: Path) -> Transaction:
    base = staging_root(state_dir, root)
    for old in pending(state_dir, root):
        if old.journal["state"] == STAGED or (
            old.journal["state"] == FAILED and old.journal.get("rolled_back")
        ):
            shutil.rmtree(old.path)  # a newer plan supersedes one not yet applied
        elif old.journal["state"] == APPLIED:
            raise UsageError(
                f"transaction {old.path.name} is applied but its boot is not confirmed yet: "
                "the agent confirms it once the system is up (`lamina agent run`)"
            )
        else:
            raise UsageError(
                f"transaction {old.path.name} is {old.journal['state']}: run `lamina agent boot` first"
            )
    return Transaction(base / os.urandom(16).hex(), {})


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
