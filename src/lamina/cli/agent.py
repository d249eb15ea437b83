"""``lamina agent``: enroll, run, status, boot, install-service (the endpoint's side)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lamina.agent import service
from lamina.cli import agent_boot, agent_run, units
from lamina.cli.common import JsonOpt, log_options
from lamina.cli.logs import LogFlags
from lamina.cli.output import emit_json

# The agent's modules (HTTP client, pydantic schemas, staging) and Rich are imported
# inside the commands that use them: ``lamina agent boot`` runs before services start
# and ``lamina agent status`` in scripts, and neither needs them (the HTTP client and
# Rich cost each about 0.2 s of start-up).
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
    state: StateOpt,
    server: Annotated[str | None, typer.Option(help="Server URL, e.g. https://lamina:8470")] = None,
    token: Annotated[
        str | None, typer.Option(help="Enrollment token from `lamina token create`.")
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(
            help="The endpoint's root folder (/ on a real machine; / with --from-fw-cfg)."
        ),
    ] = None,
    from_fw_cfg: Annotated[
        bool,
        typer.Option(
            "--from-fw-cfg",
            help="In a managed flex guest: take the server and token the flex client handed "
            "over through QEMU's fw_cfg.",
        ),
    ] = False,
    fw_cfg_path: Annotated[
        Path | None,
        typer.Option(
            help="Where --from-fw-cfg reads (default "
            "/sys/firmware/qemu_fw_cfg/by_name/opt/org.lamina/enroll/raw).",
            show_default=False,
        ),
    ] = None,
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
    from lamina.agent.enrollment import enroll
    from lamina.agent.state import load_status
    from lamina.errors import UsageError

    if from_fw_cfg:
        from lamina.agent.fwcfg import FW_CFG_ENROLL, read_enrollment

        if server or token:
            raise UsageError(
                "--from-fw-cfg takes the server and token from fw_cfg: drop --server/--token"
            )
        info = read_enrollment(fw_cfg_path or FW_CFG_ENROLL)
        server, token, root = info.server_url, info.token, root or Path("/")
    if not server or not token or root is None:
        raise UsageError("give --server, --token and --root (or --from-fw-cfg in a flex guest)")
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
    registration = load_status(state).registration
    if as_json:
        emit_json({"id": st.device_id, "device_id": st.device_id, "state": registration})
    else:
        typer.echo(f"enrolled as device {st.device_id} ({registration})")


@app.command()
@log_options
def run(
    state: Annotated[
        Path | None,
        typer.Option("--state", help="The agent's state folder (default /var/lib/lamina)."),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="One full cycle, then exit.")] = False,
    sync: Annotated[bool, typer.Option("--sync", help="Upload now even if not due.")] = False,
    poll: Annotated[float | None, typer.Option(help="Seconds between cycles (default 15).")] = None,
    insecure: InsecureOpt = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Settings file (TOML: state, poll, insecure, log_format, log_level); "
            "default /etc/lamina/agent.toml.",
        ),
    ] = None,
    *,
    logs: LogFlags,
    boot_check: Annotated[
        str | None,
        typer.Option(
            help="Command that says the system is up after a staged apply (exit 0), run "
            "with LAMINA_ROOT set; default: multi-user.target reached (on /), else healthy."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The agent daemon: report, upload when due or asked, do queued work.

    Every setting also comes from LAMINA_AGENT_STATE, LAMINA_AGENT_POLL... or
    /etc/lamina/agent.toml. Each cycle is logged at info on stderr (journald-friendly
    under systemd).
    """
    agent_run.run(state, once, sync, poll, insecure, config, logs, boot_check, as_json)


@app.command()
def status(state: StateOpt, as_json: JsonOpt = False) -> None:
    """The agent's state, last sync and progress."""
    agent_boot.status(state, as_json)


@app.command()
def boot(state: StateOpt, as_json: JsonOpt = False) -> None:
    """Apply staged transactions atomically (run by the init system before services start)."""
    agent_boot.boot(state, as_json)


@app.command("install-service")
def install_service(
    state: StateOpt,
    unit_dir: Annotated[Path, typer.Option(help="Where to write the units.")] = units.UNIT_DIR,
) -> None:
    """Write (and where systemd runs, enable) the agent's systemd units."""
    for p in units.write_units(service.units(state, units.lamina_command()), unit_dir):
        typer.echo(f"wrote {p}")
