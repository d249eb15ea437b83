"""The ``lamina`` command: one Typer app, one module per command group, and a quick
entry for the commands that must start fast.

``main()`` first asks :mod:`lamina.cli.quick` whether it takes the command line: it
does for the well-formed invocations of ``lamina --help``, ``lamina --version``,
``lamina version``, ``lamina agent status`` and ``lamina agent boot`` (run at boot,
before services start), which it parses with the standard library and runs through
the same functions as the Typer commands, without importing Typer, pydantic's type
adapters or Rich. Everything else, including every usage error and every other
``--help``, goes to the Typer app in :mod:`lamina.cli.root`. This module is data and
``main()`` only: importing it imports no third-party package.

The groups are loaded lazily (click's ``LazyGroup`` pattern): :data:`COMMANDS` names
each group's module and its one-line help, and a group's module is imported only when
the group is invoked. ``lamina --help`` lists every group from :data:`COMMANDS` without
importing one, and ``lamina agent boot`` imports the agent's command functions and
nothing of the server's, database's or other groups' (tests/cli/test_startup.py holds
both).

``main()`` is the one place that turns what ends a command into what a user sees:
a Lamina error is one ``error:`` line and its exit code; a usage error (unknown
command, missing argument, bad option value, a group given no command) is one line
with a hint and exit code 2; Ctrl-C is one line and exit code 130. None of them
prints a traceback. Everything printed goes through ``output.safe``.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

from lamina.cli.output import fail, install_safe_streams
from lamina.errors import WARNINGS_EXIT, LaminaError

INTERRUPTED = "interrupted; run the same command again to resume"


#: Every top-level command but ``version`` and ``docs``, in ``--help``'s order: its
#: module, the Typer app (a group) or function (a command) there, and its one-line help
#: (tests/cli/test_help.py checks it is the loaded command's own).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "login": (
        "lamina.cli.login",
        "login",
        "Log in and save the session (mode 0600) for the other commands.",
    ),
    "logout": (
        "lamina.cli.login",
        "logout",
        "Revoke this session on the server and remove the saved login.",
    ),
    "status": (
        "lamina.cli.ops",
        "status",
        "The fleet at a glance: device health counts, store usage, events to look at.",
    ),
    "store": (
        "lamina.cli.store",
        "app",
        "The deduplicated store: init, check, gc, rebuild-index, stats.",
    ),
    "snapshot": (
        "lamina.cli.snapshot",
        "app",
        "Snapshots of folders in the store: create, list, ls, diff, restore, forget.",
    ),
    "server": (
        "lamina.cli.server",
        "app",
        "Run the Lamina server; on first start it creates the store and the user `admin`.",
    ),
    "user": (
        "lamina.cli.user",
        "app",
        "User accounts and roles (administrator, helpdesk, readonly, flex-user).",
    ),
    "token": (
        "lamina.cli.fleet",
        "token_app",
        "Enrollment tokens, sessions and API tokens: create, list, revoke.",
    ),
    "device": ("lamina.cli.fleet", "device_app", "Enrolled devices."),
    "policy": (
        "lamina.cli.fleet",
        "policy_app",
        "CVD policies: schedule, retention, protected area, bandwidth.",
    ),
    "cvd": ("lamina.cli.cvd", "app", "CVDs: the central copy of each endpoint."),
    "layer": (
        "lamina.cli.layer",
        "app",
        "Base and app layers: capture, record, assign, enforce.",
    ),
    "collection": (
        "lamina.cli.collection",
        "app",
        "Collections of CVDs, static or by a filter on device facts.",
    ),
    "driver": (
        "lamina.cli.driver",
        "app",
        "Driver library: packs of firmware, modules and .deb files; profiles that match hardware.",
    ),
    "task": ("lamina.cli.fleet", "task_app", "Long operations and their progress."),
    "event": (
        "lamina.cli.ops",
        "event_app",
        "Events: failures the server and the agents report, by severity, until acknowledged.",
    ),
    "flex": (
        "lamina.cli.flex",
        "app",
        "Flex: images, restriction policies, entitlements and instances (admin side).",
    ),
    "group": (
        "lamina.cli.flex",
        "group_app",
        "Groups of users (entitlements name groups).",
    ),
    "agent": ("lamina.cli.agent", "app", "The endpoint agent."),
    "flex-client": (
        "lamina.cli.flex_client",
        "app",
        "Run the flex images you are entitled to on this laptop (encrypted, under a lease).",
    ),
}


#: What ``lamina``'s exit status means: one code per branch of ``errors.py``'s tree
#: (tests/cli/test_help.py holds the two in step), and Ctrl-C.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "success"),
    (1, "an unexpected error (a bug: please report it)"),
    (2, "wrong arguments or request (UsageError)"),
    (3, "not found (NotFoundError)"),
    (4, "conflict: exists already, or the state forbids it; store busy (ConflictError)"),
    (5, "damaged or missing data (IntegrityError)"),
    (6, "wrong key file or passphrase (StoreKeyError)"),
    (7, "not logged in, not allowed, or rate-limited (AuthError)"),
    (8, "the server, the object store or the database failed (BackendError)"),
    (9, "too large (TooLargeError)"),
    (WARNINGS_EXIT, "finished with warnings: files skipped or not restored (listed on stderr)"),
    (130, "interrupted (Ctrl-C); run the same command again to resume"),
)

#: An example or two under each group's help (`lamina GROUP --help`); test_help.py
#: checks every group has one.
GROUP_EXAMPLES = {
    "server": "lamina server --data /srv/lamina --host 0.0.0.0 --self-signed; "
    "lamina server install-service --data /srv/lamina --host 0.0.0.0 --self-signed",
    "store": "lamina store init --data ./backups; lamina store check --read-data --data ./backups",
    "snapshot": "lamina snapshot create /etc --data ./backups; "
    "lamina snapshot restore latest --output /tmp/etc --data ./backups",
    "user": "lamina user create alice --role helpdesk; lamina user audit --limit 20",
    "token": "lamina token create --expires 1h --policy standard; lamina token list",
    "device": "lamina device list --state pending; lamina device reject HOSTNAME",
    "policy": "lamina policy create standard --interval 1h --keep-daily 7; lamina policy list",
    "cvd": "lamina cvd centralize HOSTNAME --policy standard; lamina cvd list --state offline",
    "layer": "lamina layer capture REF-HOST --name debian-base; "
    "lamina layer assign HOSTNAME --base debian-base --dry-run",
    "collection": "lamina collection create dell --filter vendor=Dell*; lamina collection list",
    "task": "lamina task list --state running; lamina task watch 3f2a",
    "event": "lamina event list --pending; lamina event ack 42",
    "layer record": "lamina layer record start REF-HOST; (install software there); "
    "lamina layer record finalize REF-HOST --name office",
    "agent": "lamina agent enroll --server https://lamina:8470 --token TOKEN --root / "
    "--state /var/lib/lamina; lamina agent run --state /var/lib/lamina",
    "driver": "lamina driver import wifi-intel ./wifi-intel; lamina driver list",
    "driver profile": "lamina driver profile create thinkpad --pack wifi-intel "
    "--match sys_vendor=LENOVO; lamina driver profile test thinkpad",
    "flex": "lamina flex image register win11 ./win11.qcow2; lamina flex entitle office-win "
    "--image win11 --policy standard --group staff",
    "flex image": "lamina flex image register win11 ./win11.qcow2; lamina flex image show win11",
    "flex policy": "lamina flex policy create standard --lease 7d --usb hid; "
    "lamina flex policy update standard --clipboard on",
    "flex entitlement": "lamina flex entitlement list; "
    "lamina flex entitlement update office-win --group staff --group contractors",
    "flex instance": "lamina flex instance list; lamina flex instance lock ID --message 'Call IT'",
    "group": "lamina group create staff --member alice --member bob; lamina group add staff carol",
    "flex-client": "lamina flex-client list; lamina flex-client download ENTITLEMENT; "
    "lamina flex-client status; lamina flex-client launch INSTANCE",
}


class Interrupt:
    """SIGINT handler: remembers the interrupt, then raises KeyboardInterrupt as Python's does
    (Typer turns it into exit code 130 silently; ``main()`` prints the line)."""

    seen = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.seen = True
        raise KeyboardInterrupt


def main() -> None:
    # httpx's __init__ imports its own command-line tool (click, pygments, Rich: ~30 ms
    # of every agent run's CPU) unless that import fails; Lamina never runs that tool.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    # pydantic looks for plugins in every installed distribution's entry points when it
    # builds its first model (~4 ms of every agent run); Lamina uses none. Set the
    # variable (even empty) to have pydantic look.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    install_safe_streams()
    interrupt = Interrupt()
    signal.signal(signal.SIGINT, interrupt)
    from lamina.cli.quick import quick_command

    command = quick_command(sys.argv[1:])
    if command is None:
        from lamina.cli.root import run

        run(interrupt)
        return
    try:
        command()
    except LaminaError as e:
        fail(e)
    except KeyboardInterrupt:
        interrupt.seen = True
    if interrupt.seen:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)


#: What lived here before the Typer app moved to ``lamina.cli.root`` (``from lamina.cli
#: import app`` in tests and tools), loaded on first use so that ``import lamina.cli``
#: stays free of Typer.
_ROOT_NAMES = frozenset(
    {"app", "load_command", "command_reference", "usage_line", "Root", "Group", "Command", "EPILOG"}
)


def __getattr__(name: str) -> Any:
    if name in _ROOT_NAMES:
        from lamina.cli import root

        return getattr(root, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
