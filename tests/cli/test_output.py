"""What the CLI prints is safe for a terminal (finding 18), and Ctrl-C ends a command in
one line with exit code 130; through a real ``lamina server`` and the real entry point.

The review's reproduction: an OSC sequence (``ESC ] 0 ; owned BEL`` retitles the
terminal) and CSI sequences (``ESC [ 2 J`` clears it; ``0x9b`` is the one-byte CSI) in a
name typed at the login prompt reach ``lamina user audit``, and in a device's hostname
and facts reach ``lamina device list``; in a file name they reach ``snapshot ls``.
"""

from __future__ import annotations

import os
import pty
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lamina.cli import INTERRUPTED
from lamina.cli.output import safe
from tests.cli.conftest import Cli
from tests.e2e.conftest import ADMIN_PASSWORD, LAMINA, Lamina, ServerProc

HOSTILE = "\x1b]0;owned\x07\x1b[2J\x9b31m"
ESCAPED = "\\x1b]0;owned\\x07\\x1b[2J\\x9b31m"


def on_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``args`` with stdout and stderr on a pseudo-terminal, as an admin at a shell
    would (off a terminal, click already strips CSI sequences, not OSC ones)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every end of the terminal's child side is closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        rc = proc.wait(timeout=120)
    return rc, b"".join(chunks).decode().replace("\r\n", "\n")


def assert_terminal_safe(text: str) -> None:
    bad = [c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F]
    assert not bad, repr(text)


def test_safe_escapes_controls_and_keeps_lines() -> None:
    assert safe(f"a{HOSTILE}b\n\tc") == f"a{ESCAPED}b\n\tc"
    assert safe("\u202eevil\u2066") == "\\u202eevil\\u2066"  # bidi overrides reorder a line
    assert safe("caf\udce9") == "caf\\xe9"  # a non-UTF-8 file name, surrogate-escaped
    assert safe(safe(HOSTILE)) == safe(HOSTILE)
    assert safe("plain ünïcode 名前") == "plain ünïcode 名前"


@dataclass
class Site:
    server: ServerProc
    api: httpx.Client
    admin: Lamina


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """A real server (SQLite, tmp data), an admin API client, and the admin's ``lamina``."""
    (tmp_path / "server").mkdir()
    server = ServerProc(tmp_path / "server", []).start()
    try:
        r = httpx.post(
            server.url + "/api/v1/auth/login", json={"user": "admin", "password": ADMIN_PASSWORD}
        )
        r.raise_for_status()
        token = r.json()["token"]
        api = httpx.Client(
            base_url=server.url + "/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        admin = Lamina(tmp_path / "admin")
        admin.env.update(LAMINA_URL=server.url, LAMINA_TOKEN=token)
        with api:
            yield Site(server, api, admin)
    finally:
        server.stop()


def enroll(site: Site, hostname: str, vendor: str = "", model: str = "") -> httpx.Response:
    token = site.api.post("/tokens", json={"expires_in": 3600}).json()["token"]
    facts = {
        "machine_id": secrets.token_hex(16),
        "hostname": hostname,
        "vendor": vendor,
        "model": model,
    }
    return httpx.post(
        site.server.url + "/api/v1/agent/enroll", json={"token": token, "facts": facts}
    )


def test_cvd_name_is_escaped_in_cvd_list(site: Site) -> None:
    # Failed logins under names that are no account leave no audit row (finding 16),
    # so the free text here is a CVD's name, which an administrator types.
    device = enroll(site, "desk-9").json()["device_id"]
    assert site.api.post("/policies", json={"name": "p9", "settings": {}}).status_code == 201
    r = site.api.post(
        f"/devices/{device}/centralize", json={"policy": "p9", "name": f"cvd{HOSTILE}"}
    )
    assert r.status_code == 201, r.text
    rc, out = on_terminal([*LAMINA, "cvd", "list"], site.admin.env)
    assert rc == 0, out
    assert f"cvd{ESCAPED}" in out
    assert_terminal_safe(out)


def test_device_hostname_and_facts_are_escaped_in_device_list(site: Site) -> None:
    # Facts with C0 controls are refused by the server; a C1 control (\x9b, CSI on some
    # terminals) gets through and must be escaped by the CLI.
    refused = enroll(site, "desk-0", vendor=f"Dell{HOSTILE}")
    assert refused.status_code == 400 and "vendor" in refused.json()["message"], refused.text
    r = enroll(site, "desk-1", vendor="Dell\x9b31m", model="OptiPlex\x9b2J")
    assert r.status_code == 201, r.text
    # A hostname of control characters is refused by the server (finding 18's server
    # half): only [A-Za-z0-9_.-] are taken.
    hostile_host = enroll(site, f"desk-2{HOSTILE}")
    assert hostile_host.status_code == 400, hostile_host.text
    assert "hostname" in hostile_host.json()["message"]
    rc, out = on_terminal([*LAMINA, "device", "list"], site.admin.env)
    assert rc == 0, out
    assert_terminal_safe(out)
    assert "Dell\\x9b31m OptiPlex\\x9b2J" in out
    # The same name in an error message that echoes it back.
    rc, err = on_terminal([*LAMINA, "device", "reject", f"no-such{HOSTILE}"], site.admin.env)
    assert rc != 0, err
    assert_terminal_safe(err)
    assert ESCAPED in err


def test_file_names_are_escaped_in_snapshot_listings(
    cli_factory: Callable[..., Cli], tmp_path: Path
) -> None:
    cli = cli_factory()
    cli.run("store", "init")
    src = tmp_path / "src"
    src.mkdir()
    (src / f"name{HOSTILE}.txt").write_text("one")
    first = cli.json("snapshot", "create", str(src))["id"]
    (src / f"more{HOSTILE}").write_text("two")
    second = cli.json("snapshot", "create", str(src))["id"]
    rc, listing = on_terminal(cli.args("snapshot", "ls", first), cli.env)
    assert rc == 0, listing
    assert f"name{ESCAPED}.txt" in listing
    rc, diff = on_terminal(cli.args("snapshot", "diff", first, second), cli.env)
    assert rc == 0, diff
    assert f"more{ESCAPED}" in diff
    assert_terminal_safe(listing + diff)


def test_ctrl_c_prints_one_line_and_exits_130(site: Site) -> None:
    """SIGINT to a real long-running command (``task watch`` on a sync no agent will run),
    sent once it has printed: deterministic, no sleeps."""
    device = enroll(site, "desk-3").json()["device_id"]
    assert site.api.post("/policies", json={"name": "std", "settings": {}}).status_code == 201
    r = site.api.post(f"/devices/{device}/centralize", json={"policy": "std"})
    assert r.status_code == 201, r.text
    task = site.api.post(f"/cvds/{r.json()['id']}/sync")
    assert task.status_code in (200, 201, 202), task.text
    proc = subprocess.Popen(
        [*LAMINA, "task", "watch", task.json()["id"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=site.admin.env,
    )
    try:
        assert proc.stderr is not None
        first = os.read(proc.stderr.fileno(), 4096)  # blocks until the watch has printed
        assert first, "task watch ended before printing"
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (first + rest).decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.endswith(f"\n{INTERRUPTED}\n") or err.endswith(f"\r{INTERRUPTED}\n"), repr(err)
    assert out == b""


def test_help_on_a_terminal_keeps_its_styling(tmp_path: Path) -> None:
    """Rich's own escape sequences (Typer's help) reach the terminal as styling; only
    what is printed as text is escaped."""
    rc, out = on_terminal([*LAMINA, "store", "--help"], {**os.environ, "HOME": str(tmp_path)})
    assert rc == 0, out
    assert "Usage:" in out and "\x1b[" in out
    assert "\\x1b" not in out


def test_progress_off_a_terminal_is_periodic_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """Off a terminal, progress is one line per period with percent, bytes, files and
    the time left (a backup counts its work first, so there is a total)."""
    from lamina.cli.output import progress_line
    from lamina.cli.progress import byte_progress

    with byte_progress("backing up", total=4096, log_every=0.0) as advance:
        advance(1, 1024)
        advance(1, 1024)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("backing up: 25% 1.0 KiB of 4.0 KiB, 1 files")
    assert lines[1].startswith("backing up: 50% 2.0 KiB of 4.0 KiB, 2 files")
    assert progress_line("restoring", 50, 1, 100, 10.0) == (
        "restoring: 50% 50 B of 100 B, 1 files, 5 B/s, about 0:00:10 left"
    )
    assert progress_line("syncing", 50, 3, None, 1.0) == "syncing: 50 B, 3 files, 50 B/s"


def test_a_total_worked_out_later_is_asked_at_the_first_log_line_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A total given as a function (a metadata walk) costs nothing to work that ends
    before its first log line, and is asked once when a line shows it."""
    from lamina.cli.progress import byte_progress

    asked: list[int] = []

    def total() -> int:
        asked.append(1)
        return 4096

    with byte_progress("backing up", total=total, log_every=3600.0) as advance:
        advance(1, 1024)
    assert asked == [] and capsys.readouterr().err == ""
    with byte_progress("backing up", total=total, log_every=0.0) as advance:
        advance(1, 1024)
        advance(1, 1024)
    assert asked == [1]
    assert capsys.readouterr().err.splitlines()[1].startswith("backing up: 50% 2.0 KiB of 4.0 KiB")


@pytest.mark.parametrize("tty", [True, False])
def test_stderr_is_a_terminal_as_rich_decides_it(
    tty: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``snapshot create`` imports Rich only for a bar: it must take stderr for a terminal
    exactly when Rich's console does."""
    from rich.console import Console

    from lamina.cli.output import stderr_is_terminal

    if tty:
        leader, follower = os.openpty()
        stream = os.fdopen(follower, "w")
    else:
        stream = (tmp_path / "log").open("w")
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        for tty_compatible in (None, "", "0", "1", "2"):
            for force_color in (None, "", "1", "0"):
                for name, value in (
                    ("TTY_COMPATIBLE", tty_compatible),
                    ("FORCE_COLOR", force_color),
                ):
                    if value is None:
                        monkeypatch.delenv(name, raising=False)
                    else:
                        monkeypatch.setenv(name, value)
                rich_says = Console(stderr=True).is_terminal
                assert stderr_is_terminal() == rich_says, (tty_compatible, force_color)
        monkeypatch.delenv("TTY_COMPATIBLE")
        monkeypatch.delenv("FORCE_COLOR")
        assert stderr_is_terminal() == tty
    finally:
        stream.close()
        if tty:
            os.close(leader)
