"""Start-up: a command loads only its own group. ``lamina --help`` loads no Lamina
package but the CLI's and no third-party one; the agent's commands (run on endpoints at
boot) never load the database, the server, the store commands, the HTTP client, Typer,
Rich, pydantic or the ciphers; ``snapshot list`` on a local store loads neither Typer nor
SQLAlchemy. And the quick entry that takes these command lines (``lamina.cli.quick``)
prints what the Typer app prints for them, and the same exit code.
Deterministic: what is imported, not how long it takes (figures: ``python -m bench.startup``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import lamina.cli
from lamina.cli import root_help
from lamina.cli.quick import quick_command
from tests.server.conftest import Live, live  # noqa: F401  (the fixture)

#: What none of the three start-up commands may load: the server's side, the other
#: command groups, and the heavy libraries only other commands need.
NEVER = {
    "typer",
    "click",
    "sqlalchemy",
    "fastapi",
    "uvicorn",
    "alembic",
    "httpx",
    "rich",
    "cryptography",
    "pydantic",
    "lamina.db",
    "lamina.server",
    "lamina.layers",
    "lamina.protocol",
    "lamina.cli.store",
    "lamina.cli.snapshot",
    "lamina.cli.cvd",
    "lamina.cli.fleet",
    "lamina.cli.client",
    "lamina.cli.progress",
    "lamina.agent.runner",
    "lamina.agent.staging.stage",
    "lamina.agent.staging.migrate",
}


def imported(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules ``lamina ARGS`` imports (from ``python -X importtime``); it must exit 0."""
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lamina.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return {
        line.rsplit("|", 1)[1].strip()
        for line in p.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def _agent_state(folder: Path) -> Path:
    """An enrolled agent's state folder (never run), its root ``folder`` itself."""
    state = {
        "server": "https://lamina.example",
        "device_id": "d",
        "credential": "lmd_x",
        "root": str(folder),
        "chunker_seed": 1,
        "id_key": "00" * 32,
        "min_size": 1,
        "avg_size": 2,
        "max_size": 4,
        "version": 2,
    }
    (folder / "agent.json").write_text(json.dumps(state))
    return folder


@pytest.mark.parametrize("command", ["status", "boot"])
def test_the_agents_commands_load_no_database_server_or_store_command(
    tmp_path: Path, command: str
) -> None:
    mods = imported("agent", command, "--state", str(_agent_state(tmp_path)))
    assert "lamina.agent.staging" in mods  # the command ran
    assert not NEVER & mods


def test_help_loads_no_command_group() -> None:
    mods = imported("--help")
    assert {m for m in mods if m.startswith("lamina.")} <= {
        "lamina.cli",
        "lamina.cli.output",
        "lamina.cli.quick",
        "lamina.cli.root_help",
        "lamina.errors",
    }
    assert not NEVER & mods


@pytest.fixture(scope="module")
def local_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder holding a local store (SQLite and packs) with a snapshot of each of
    two sources, made once in this process by the functions the CLI calls."""
    from lamina.db.stores import StoreLocation, init_store
    from lamina.tree.backup import backup

    tmp = tmp_path_factory.mktemp("store")
    src = tmp / "src"
    src.mkdir()
    (src / "a.txt").write_text("a" * 100)
    (src / "b.txt").write_text("b" * 200)
    store = init_store(StoreLocation(data=tmp / "data"))
    try:
        for source in ("one:/src", "two:/src"):
            backup(store, src, source=source, cache_path=tmp / f"cache-{source[:3]}.sqlite")
    finally:
        store.close()
    return tmp / "data"


def test_snapshot_list_on_a_local_store_loads_no_typer_or_sqlalchemy(local_store: Path) -> None:
    mods = imported("snapshot", "list", "--json", "--data", str(local_store))
    assert "lamina.db.sqlite_read" in mods  # the command ran, the quick way
    assert not {"typer", "click", "pydantic", "sqlalchemy", "alembic", "rich"} & mods
    assert not {m for m in mods if m.startswith(("lamina.server", "lamina.tree", "lamina.agent"))}


def test_an_engine_backup_loads_no_agent_http_protocol_or_database_library(
    local_store: Path, tmp_path: Path
) -> None:
    # A backup into a local store walks, chunks and stores: the agent's modules (and
    # through them httpx and every pydantic schema) cost ~0.25 s of CPU a run, SQLAlchemy
    # and the table definitions ~0.3 s (the embedded catalog is read and written through
    # the standard library's sqlite3: lamina.db.sqlite_catalog).
    src = tmp_path / "first"
    src.mkdir()
    (src / "c.txt").write_text("c" * 300)
    data = tmp_path / "data"  # a copy: the other tests count the module store's snapshots
    shutil.copytree(local_store, data)
    for _ in range(2):  # a first backup (its size walked first), then a re-backup
        mods = imported("snapshot", "create", str(src), "--data", str(data))
        assert "lamina.tree.backup" in mods  # the command ran
        assert "lamina.db.sqlite_catalog" in mods
        assert not {"httpx", "lamina.protocol.schemas", "sqlalchemy", "alembic"} & mods
        assert not {"typer", "click", "pydantic"} & mods  # the quick entry
        assert "rich" not in mods  # off a terminal, with nothing to warn about
        assert not {m for m in mods if m.startswith(("lamina.agent", "lamina.server"))}


# --- the quick entry and the Typer app agree ------------------------------------------


Outcome = tuple[int, str, str]


@pytest.fixture
def run_both(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[[list[str]], tuple[Outcome, Outcome]]]:
    """Runs ``lamina ARGS`` in this process through ``main()`` (which must take the quick
    entry) and through the Typer app alone; returns each one's exit code, stdout, stderr."""
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.delenv("LAMINA_AGENT_STATE", raising=False)
    for name in ("LAMINA_DATA", "LAMINA_DB", "LAMINA_STORE", "LAMINA_KEYFILE"):
        monkeypatch.delenv(name, raising=False)
    handler = signal.getsignal(signal.SIGINT)

    def outcome(run: Callable[[], None]) -> Outcome:
        try:
            run()
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return rc, out.out, out.err

    def both(args: list[str]) -> tuple[Outcome, Outcome]:
        from lamina.cli import root

        monkeypatch.setattr(sys, "argv", ["lamina", *args])
        assert quick_command(args) is not None, args
        quick = outcome(lamina.cli.main)
        typer_app = outcome(lambda: root.run(lamina.cli.Interrupt()))
        return quick, typer_app

    yield both
    signal.signal(signal.SIGINT, handler)


def test_quick_commands_print_what_typer_prints(
    tmp_path: Path,
    local_store: Path,
    run_both: Callable[[list[str]], tuple[Outcome, Outcome]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = _agent_state(tmp_path)
    data = str(local_store)
    lines = [
        ["--help"],
        ["--version"],
        ["version"],
        ["agent", "status", "--state", str(state)],
        ["agent", "status", f"--state={state}", "--json"],
        ["agent", "boot", "--json", "--state", str(state)],
        ["agent", "boot", "--state", str(state)],
        ["agent", "status", "--state", str(tmp_path / "not-enrolled")],  # an error, exit 3
        ["snapshot", "list", "--data", data],
        ["snapshot", "list", "--json", "--data", data, "--source", "two:/src"],
        ["snapshot", "list", "--data", data, "--keyfile", str(tmp_path / "none.json")],
    ]
    for args in lines:
        quick, typer_app = run_both(args)
        assert quick == typer_app, args
    assert run_both(["snapshot", "list", "--data", data])[0][1].count("\n") == 2
    monkeypatch.setenv("LAMINA_AGENT_STATE", str(state))
    assert run_both(["agent", "status", "--json"])[0][0] == 0
    monkeypatch.setenv("LAMINA_DATA", data)
    quick, typer_app = run_both(["snapshot", "list", "--json"])
    assert quick == typer_app
    assert len(json.loads(quick[1])) == 2


def test_snapshot_create_the_quick_way_prints_what_typer_prints(
    tmp_path: Path,
    run_both: Callable[[list[str]], tuple[Outcome, Outcome]],
) -> None:
    from lamina.db.stores import StoreLocation, init_store

    data = tmp_path / "data"
    init_store(StoreLocation(data=data)).close()
    src = tmp_path / "src"
    (src / "skip").mkdir(parents=True)
    (src / "a.txt").write_text("a" * 100)
    (src / "skip" / "b.txt").write_text("b" * 200)
    d = str(data)
    # Typer and the quick entry back up the same tree the same way (each run makes a
    # snapshot of its own).
    for args in (
        ["snapshot", "create", str(src), "--data", d, "--source", "s:/x", "--json"],
        ["snapshot", "create", str(src), "--exclude", "skip", "--data", d, "--force", "--json"],
        ["snapshot", "create", str(tmp_path / "absent"), "--data", d],  # not a folder
        ["snapshot", "create", str(src), "--data", str(tmp_path / "none")],  # no store
    ):
        quick, typer_app = run_both(args)
        assert quick[0] == typer_app[0] and quick[2] == typer_app[2], args
        if "--json" in args:
            q, t = json.loads(quick[1]), json.loads(typer_app[1])
            assert q["id"] != t["id"] and q.keys() == t.keys()
            # The second run finds the first's files (what it reads and adds differs).
            run = {"id", "time", "files_read", "files_unchanged", "new_blobs", "new_bytes"}
            assert {k: v for k, v in q.items() if k not in run and not k.startswith("new_")} == {
                k: v for k, v in t.items() if k not in run and not k.startswith("new_")
            }
            assert q["files_read"] + q["files_unchanged"] == t["files_read"] + t["files_unchanged"]
        else:
            assert quick[1] == typer_app[1]
    quick, typer_app = run_both(["snapshot", "create", str(src), "--data", d])
    assert quick[0] == typer_app[0] == 0 and quick[2] == typer_app[2]
    line = re.compile(
        r"snapshot [0-9a-f]{12} of [^:]+:.*/src: 2 files, 300 B; "
        r"(\d) read, (\d) unchanged; \d+ B added to the store\n"
    )
    q, t = line.fullmatch(quick[1]), line.fullmatch(typer_app[1])
    assert q and t and sum(map(int, q.groups())) == sum(map(int, t.groups())) == 2


def test_a_wrong_key_file_is_refused_the_quick_way_as_the_typer_way(
    tmp_path: Path,
    local_store: Path,
    run_both: Callable[[list[str]], tuple[Outcome, Outcome]],
) -> None:
    from lamina.store.keys import StoreKeys, write_keyfile

    other = tmp_path / "other-store.json"
    write_keyfile(other, StoreKeys.generate())
    quick, typer_app = run_both(
        ["snapshot", "list", "--data", str(local_store), "--keyfile", str(other)]
    )
    assert quick == typer_app
    assert quick[0] == 6 and "key file is for store" in quick[2]


@pytest.mark.parametrize(
    "args",
    [
        ["agent", "status"],  # --state missing: Typer says so
        ["agent", "status", "--state"],
        ["agent", "status", "--state", "a", "--state", "b"],
        ["agent", "boot", "--state", "s", "--help"],
        ["agent", "boot", "--state", "s", "--jsonx"],
        ["agent", "status", "--state", "--json"],
        ["agent", "run", "--once", "--poll", "5"],
        ["agent", "run", "--once", "-v"],
        ["agent", "run", "--once", "--once"],
        ["agent", "run", "--state"],
        ["agent", "run", "--help"],
        ["snapshot", "list", "--data", ""],
        ["snapshot", "list", "extra"],
        ["snapshot", "create"],
        ["snapshot", "create", "--json", "src"],
        ["snapshot", "create", "src", "--exclude", "a", "--exclude", "b"],
        ["snapshot", "create", "src", "extra"],
        ["-h"],
        ["agent"],
        [],
    ],
)
def test_other_command_lines_go_to_typer(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAMINA_AGENT_STATE", raising=False)
    assert quick_command(args) is None


def test_help_goes_to_typer_on_a_narrow_terminal_or_during_completion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    assert quick_command(["--help"]) is not None
    monkeypatch.setenv("COLUMNS", "79")
    assert quick_command(["--help"]) is None
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("_LAMINA_COMPLETE", "bash_complete")
    assert quick_command(["--help"]) is None


def test_the_quick_help_text_is_current() -> None:
    """``lamina.cli.root_help`` is what Typer prints now; if this fails, run
    ``python -m lamina.cli.root_help``."""
    from lamina.cli.root import root_help_body

    assert root_help.key() == root_help.KEY
    assert root_help_body() == root_help.BODY


def test_agent_run_is_taken_the_quick_way_and_fails_as_typer_does(
    tmp_path: Path, run_both: Callable[[list[str]], tuple[Outcome, Outcome]]
) -> None:
    from tests.cli.invoke import _logging_kept

    missing = str(tmp_path / "not-enrolled")
    with _logging_kept():  # both ways set up the log lines on stderr
        for args in (
            ["agent", "run", "--once", "--state", missing],
            ["agent", "run", "--once", "--sync", "--json", "--quiet", f"--state={missing}"],
        ):
            quick, typer_app = run_both(args)
            assert quick == typer_app, args
            assert quick[0] == 3 and "no agent state" in quick[2], quick


def test_a_sync_by_agent_run_once_loads_no_typer(live: Live, tmp_path: Path) -> None:  # noqa: F811
    """``agent run --once --sync --json`` (a timer's line) goes by the quick entry: a
    sync of an unchanged tree is mostly start-up, and Typer with its parameter adapters
    was about a fifth of it."""
    _, state = live.enrolled_agent(tmp_path, "quick-host")
    off_terminal = {**os.environ, "TTY_COMPATIBLE": "0"}  # a timer's: stderr is a log
    args = ("agent", "run", "--once", "--sync", "--json", "--state", str(state))
    mods = imported(*args, env=off_terminal)
    assert "lamina.agent.runner" in mods  # the command ran
    assert not {"typer", "lamina.cli.root", "lamina.cli.agent"} & mods
    assert not {m for m in mods if m.startswith(("lamina.server", "lamina.db"))}
    # Session 12: nor httpx's command-line tool (click, pygments, Rich), Rich for a bar
    # no one sees, python-debian (a pending device's packages), nor the API's schemas
    # beyond the agent's (``protocol.endpoint``, ``facts``).
    assert not {m.partition(".")[0] for m in mods} & {"click", "pygments", "rich", "debian"}
    assert "lamina.protocol.endpoint" in mods
    unused = {"schemas", "layers", "migration", "flex", "ops"}
    assert not {f"lamina.protocol.{m}" for m in unused} & mods
    # Session 14: nor the tasks' parameter models when the server queued no work (the
    # kinds and states alone, ``protocol.task_kinds``).
    assert "lamina.protocol.tasks" not in mods and "lamina.protocol.task_kinds" in mods
    # nor the ciphers: an agent compresses and hashes, the server seals
    assert "cryptography" not in {m.partition(".")[0] for m in mods}
    # A restore's and a user-data stream's modules load when one runs.
    assert not {"lamina.tree.restore", "lamina.agent.stream", "lamina.agent.live"} & mods
