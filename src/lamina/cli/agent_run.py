"""What ``lamina agent run`` does, as a plain function: the Typer command (``agent.py``)
and the quick entry (``quick.py``, which parses ``agent run --once --sync --json
--state PATH`` without Typer: an unchanged sync is mostly start-up) both call
:func:`run`, so the two behave alike. No Typer here; the agent's modules and Rich are
loaded by the function, not with this module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lamina.cli.logs import LogFlags, setup_logging
from lamina.cli.output import emit_json


def _echo(line: str, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(line + "\n")
    stream.flush()


def run(
    state: Path | None,
    once: bool,
    sync: bool,
    poll: float | None,
    insecure: bool,
    config: Path | None,
    logs: LogFlags,
    boot_check: str | None,
    as_json: bool,
) -> None:
    """The agent daemon (or one cycle with ``once``); a credential the server refuses
    is one line on stderr and exit code 1 (no retry helps)."""
    from lamina.config import AGENT_CONFIG, AgentSettings
    from lamina.errors import AuthError

    settings = AgentSettings.load(
        config,
        AGENT_CONFIG,
        state=state,
        poll=poll,
        insecure=True if insecure else None,
        log_format=logs.log_format,
    )
    setup_logging(settings.log_format, settings.log_level, logs.verbose, logs.quiet)
    try:
        _run(settings.state, once, sync, settings.poll, settings.insecure, as_json, boot_check)
    except AuthError as e:
        # Revoked, archived or unknown: no retry helps. One line, exit 1.
        _echo(f"error: the server refused this agent's credential: {e.message}", err=True)
        raise SystemExit(1) from None


def _run(
    state: Path,
    once: bool,
    sync: bool,
    poll: float,
    insecure: bool,
    as_json: bool,
    boot_check: str | None,
) -> None:
    from lamina.agent.bootcheck import command_check
    from lamina.agent.runner import Agent
    from lamina.agent.state import load_status
    from lamina.cli.output import log_progress, stderr_is_terminal

    if stderr_is_terminal():  # Rich (30-40 ms of start-up) only for the bar
        from lamina.cli.progress import byte_progress as progress
    else:
        progress = log_progress

    check = command_check(boot_check) if boot_check else None
    if not once:
        agent = Agent(state, insecure=insecure, boot_check=check)
        try:
            agent.run_forever(poll)
        finally:
            agent.close()
        return
    with progress("syncing") as advance:
        seen = {"bytes": 0, "files": 0}

        def show(p: dict[str, Any]) -> None:
            # The first sync walks the tree first (total_bytes); later ones expect the
            # last snapshot's size (expected_bytes).
            total = p.get("total_bytes") or p.get("expected_bytes")
            advance(
                p.get("files", 0) - seen["files"],
                p.get("bytes", 0) - seen["bytes"],
                total if isinstance(total, int) else None,
            )
            seen.update(files=p.get("files", 0), bytes=p.get("bytes", 0))

        agent = Agent(state, on_progress=show, insecure=insecure, boot_check=check)
        try:
            done = agent.cycle(force_sync=sync)
            if as_json:
                emit_json(
                    {"id": agent.st.device_id, **done, **load_status(state).model_dump(mode="json")}
                )
            else:
                _echo(
                    f"cycle done: {'synced' if done['synced'] else 'no sync'}, {len(done['tasks'])} tasks"
                )
        finally:
            agent.close()
