"""``lamina agent``: enroll, run, status, boot, install-service (the endpoint's side)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lamina.agent import service
from lamina.cli.common import JsonOpt
from lamina.cli.output import byte_progress, emit_json

# The agent's modules (HTTP client, pydantic schemas, staging) are imported inside
# the commands: every ``lamina`` command builds this group, and importing them
# here cost every command (a backup too) about 0.2 s of start-up.
app = typer.Typer(help="The endpoint agent.", no_args_is_help=True)
StateOpt = Annotated[
    Path, typer.Option("--state", envvar="LAMINA_AGENT_STATE", help="The agent's state folder.")
]
InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="Allow plain http to a server that is not on this machine (unencrypted: "
        "anyone on the path reads the backups and can send tasks).",
    ),
]


@app.command("enroll")
def enroll_cmd(
    server: Annotated[str, typer.Option(help="Server URL, e.g. https://lamina:8470")],
    token: Annotated[str, typer.Option(help="Enrollment token from `lamina token create`.")],
    root: Annotated[Path, typer.Option(help="The endpoint's root folder (/ on a real machine).")],
    state: StateOpt,
    ca_cert: Annotated[
        Path | None,
        typer.Option(
            help="CA certificate (PEM) that signed the server's; the host name is checked."
        ),
    ] = None,
    fingerprint: Annotated[
        str | None,
        typer.Option(
            help="SHA-256 fingerprint of a self-signed server's certificate "
            "(printed by `lamina server`), instead of trusting the first one seen."
        ),
    ] = None,
    insecure: InsecureOpt = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Enroll again even though the state folder holds a credential."
        ),
    ] = False,
    facts_file: Annotated[
        Path | None,
        typer.Option(
            "--facts",
            help="JSON object of device facts merged over the detected ones, now and at "
            "every refresh (images, unusual hardware, test endpoints).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register this endpoint with the server; it stays pending until centralized."""
    from lamina.agent.runner import enroll
    from lamina.agent.state import load_status

    st = enroll(
        server,
        token,
        root,
        state,
        ca_cert,
        fingerprint=fingerprint,
        insecure=insecure,
        force=force,
        facts_file=facts_file,
    )
    status = load_status(state)
    if as_json:
        emit_json({"id": st.device_id, "device_id": st.device_id, "state": status.get("state")})
    else:
        typer.echo(f"enrolled as device {st.device_id} ({status.get('state')})")


@app.command()
def run(
    state: StateOpt,
    once: Annotated[bool, typer.Option("--once", help="One full cycle, then exit.")] = False,
    sync: Annotated[bool, typer.Option("--sync", help="Upload now even if not due.")] = False,
    poll: Annotated[float, typer.Option(help="Seconds between cycles.")] = 15.0,
    insecure: InsecureOpt = False,
    boot_check: Annotated[
        str | None,
        typer.Option(
            help="Command that says the system is up after a staged apply (exit 0), run "
            "with LAMINA_ROOT set; default: multi-user.target reached (on /), else healthy."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The agent daemon: report, upload when due or asked, do queued work."""
    from lamina.errors import AuthError

    try:
        _run(state, once, sync, poll, insecure, as_json, boot_check)
    except AuthError as e:
        # Revoked, archived or unknown: no retry helps. One line, exit 1.
        typer.echo(f"error: the server refused this agent's credential: {e.message}", err=True)
        raise typer.Exit(1) from None


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

    check = command_check(boot_check) if boot_check else None
    if not once:
        agent = Agent(state, insecure=insecure, boot_check=check)
        try:
            agent.run_forever(poll)
        finally:
            agent.close()
        return
    with byte_progress("syncing") as advance:
        seen = {"bytes": 0, "files": 0}

        def show(p: dict[str, Any]) -> None:
            advance(p.get("files", 0) - seen["files"], p.get("bytes", 0) - seen["bytes"])
            seen.update(files=p.get("files", 0), bytes=p.get("bytes", 0))

        agent = Agent(state, on_progress=show, insecure=insecure, boot_check=check)
        try:
            done = agent.cycle(force_sync=sync)
            if as_json:
                emit_json({"id": agent.st.device_id, **done, **load_status(state)})
            else:
                typer.echo(
                    f"cycle done: {'synced' if done['synced'] else 'no sync'}, {len(done['tasks'])} tasks"
                )
        finally:
            agent.close()


@app.command()
def status(state: StateOpt, as_json: JsonOpt = False) -> None:
    """The agent's state, last sync and progress."""
    from lamina.agent import staging
    from lamina.agent.state import load_state, load_status

    st = load_state(state)
    doc = {
        "id": st.device_id,
        "device_id": st.device_id,
        "server": st.server,
        "root": st.root,
        "state": "idle",
        "cvd_id": None,
        "last_sync": None,
        **load_status(state),
    }
    txs = staging.pending(state, Path(st.root))
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
        typer.echo(f"{k:<14} {doc.get(k)}")


@app.command()
def boot(state: StateOpt, as_json: JsonOpt = False) -> None:
    """Apply staged transactions atomically (run by the init system before services start)."""
    from lamina.agent import initramfs, staging
    from lamina.agent.state import StateLock, load_state, load_status, save_status

    st = load_state(state)
    lock = StateLock(state)  # never while an agent drops or stages a transaction
    try:
        applied = staging.boot(state, Path(st.root))
        for a in applied:  # the marker a migration onto other storage hardware leaves
            if a.get("rebuild_initramfs") and not a.get("error"):
                a["initramfs"] = initramfs.rebuild(Path(st.root))
    finally:
        lock.release()
    if applied:
        status = load_status(state)
        status.update(state="idle", staged=None, applied=applied)
        for a in applied:
            if a.get("kind") == "migration":  # rolled back: nothing streams in
                ok = not a.get("error") and a.get("stream")
                status["stream"] = {**a["stream"], "mode": a.get("mode")} if ok else None
            if a.get("kind") in ("layers", "migration") and not a.get("error") and "versions" in a:
                status["layers"] = a.get("versions", [])
                status["layer_labels"] = a.get("labels", [])
        status["sync_requested"] = True  # the next cycle uploads the new state
        save_status(state, status)
    if as_json:
        emit_json([{"id": a["transaction"], **a} for a in applied])
    else:
        for a in applied:
            if a.get("error"):
                typer.echo(f"transaction {a['transaction']}: {a['error']}", err=True)
        ok = len([a for a in applied if not a.get("error")])
        typer.echo(f"applied {ok} staged transactions")


@app.command("install-service")
def install_service(
    state: StateOpt,
    unit_dir: Annotated[Path, typer.Option(help="Where to write the units.")] = service.UNIT_DIR,
) -> None:
    """Write (and where systemd runs, enable) the agent's systemd units."""
    for p in service.install(state, unit_dir):
        typer.echo(f"wrote {p}")
