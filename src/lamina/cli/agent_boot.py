"""What ``lamina agent status`` and ``lamina agent boot`` do, as plain functions: the
Typer commands (``agent.py``) and the quick entry (``quick.py``, which parses their
well-formed command lines without Typer) both call these, so the two print the same.

Boot-time code: the agent's state files (read without pydantic) and staging modules
only, no Typer, Rich, HTTP client, store command or pydantic (tests/cli/test_startup.py;
a boot that applied something writes ``status.json`` through its pydantic model).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lamina.cli.output import emit_json

#: A test hook: ``agent boot`` stops dead after N operations, like a power cut.
FAIL_ENV = "LAMINA_BOOT_FAIL_AFTER"


def _echo(line: str, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(line + "\n")
    stream.flush()


def status(state: Path, as_json: bool) -> None:
    """The agent's state, last sync and progress."""
    from lamina.agent import staging
    from lamina.agent.state_files import state_doc, status_doc

    st = state_doc(state)
    doc = {
        "id": st["device_id"],
        "device_id": st["device_id"],
        "server": st["server"],
        "root": st["root"],
        **status_doc(state),
    }
    txs = staging.pending(state, Path(st["root"]))
    doc["staged"] = [t.journal["id"] for t in txs if t.journal["state"] != staging.APPLIED]
    doc["awaiting_confirmation"] = [
        {"id": t.journal["id"], "boots": t.journal.get("boots", 0)}
        for t in txs
        if t.journal["state"] == staging.APPLIED
    ]
    if as_json:
        emit_json(doc)
        return
    keys = ("device_id", "cvd_id", "state", "last_sync", "last_snapshot", "staged")
    for k in (*keys, "awaiting_confirmation", "stream", "last_error"):
        _echo(f"{k:<14} {doc.get(k)}")


def boot(state: Path, as_json: bool) -> None:
    """Apply staged transactions atomically (run by the init system before services start)."""
    from lamina.agent import initramfs, staging
    from lamina.agent.state_files import StateLock, state_doc

    root = Path(state_doc(state)["root"])
    lock = StateLock(state)  # never while an agent drops or stages a transaction
    try:
        applied = staging.boot(state, root, int(os.environ.get(FAIL_ENV, "-1")))
        for a in applied:  # the marker a migration onto other storage hardware leaves
            if a.get("rebuild_initramfs") and not a.get("error"):
                a["initramfs"] = initramfs.rebuild(root)
    finally:
        lock.release()
    if applied:
        # Something was applied (a rare boot): status.json is written through its model.
        from lamina.agent.state import record_boot

        record_boot(state, applied)
    if as_json:
        emit_json([{"id": a["transaction"], **a} for a in applied])
    else:
        for a in applied:
            if a.get("error"):
                _echo(f"transaction {a['transaction']}: {a['error']}", err=True)
        ok = len([a for a in applied if not a.get("error")])
        _echo(f"applied {ok} staged transactions")
