"""The fleet view in the CLI: `device list`, `cvd list`, `status`, `event`, `task watch`,
through the real `lamina` command against a real server (in this process, on loopback)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lamina.cli.cvd import progress_text
from lamina.config import ServerSettings
from lamina.db.engine import make_engine, write_tx
from lamina.server.services.events import record
from tests.cli.invoke import invoke
from tests.server.conftest import ADMIN_PASSWORD, Live, free_port, serve


@dataclass
class Fleet:
    live: Live
    env: dict[str, str]
    desks: list[str]  # the device ids of the two devices named "desk"
    cvds: list[str]
    pending: str

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        p = invoke(args, self.env)  # in this process: tests/cli/invoke.py
        if ok:
            assert p.returncode == 0, p.stderr
        return p

    def json(self, *args: str) -> object:
        return json.loads(self.run(*args, "--json").stdout)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    settings = ServerSettings(
        data=tmp / "data", port=free_port(), admin_password=ADMIN_PASSWORD, workers=0
    )
    for url in serve(settings):
        live = Live(url, settings.data)
        a = live.device("desk")
        a.commit_files({b"a.txt": [b"a" * 5000]})
        b = live.device("desk")
        b.commit_files({b"a.txt": [b"a" * 5000]})  # the same bytes: deduplicated
        admin = live.login()
        token = admin.post("/tokens", json={"expires_in": 3600}).json()["token"]
        r = httpx.post(
            url + "/api/v1/agent/enroll",
            json={
                "token": token,
                "facts": {"machine_id": "m-pc9", "hostname": "pc9", "agent_version": "0.9.1"},
            },
        )
        assert r.status_code == 201, r.text
        desks = [d["id"] for d in admin.get("/devices").json() if d["hostname"] == "desk"]
        env = {
            **os.environ,
            "LAMINA_URL": url,
            "LAMINA_TOKEN": admin.headers["Authorization"].removeprefix("Bearer "),
            "XDG_CONFIG_HOME": str(tmp / "config"),
        }
        try:
            yield Fleet(live, env, desks, [a.cvd_id, b.cvd_id], r.json()["device_id"])
        finally:
            for c in live.clients:
                c.close()


def table(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def test_device_list_is_a_table_with_headers_and_disambiguated_names(fleet: Fleet) -> None:
    out = fleet.run("device", "list").stdout
    header, *rows = out.strip().splitlines()
    for col in ("HOSTNAME", "STATE", "POLICY", "LAST SYNC", "LAYERS", "AGENT"):
        assert col in header
    names = sorted(r.split()[1] for r in rows)
    assert names == sorted([f"desk~{i[:8]}" for i in fleet.desks] + ["pc9"])
    states = {r.split()[1]: r.split()[2] for r in rows}
    assert states["pc9"] == "pending"
    assert all(states[f"desk~{i[:8]}"] == "online" for i in fleet.desks)
    assert all(line == line.rstrip() for line in out.splitlines())


def test_device_list_filters_by_state(fleet: Fleet) -> None:
    pending = fleet.json("device", "list", "--state", "pending")
    assert [(d["hostname"], d["agent_version"]) for d in pending] == [("pc9", "0.9.1")]
    assert fleet.json("device", "list", "--pending") == pending
    online = fleet.json("device", "list", "--state", "online")
    assert sorted(d["id"] for d in online) == sorted(fleet.desks)
    assert fleet.json("device", "list", "--state", "offline") == []
    bad = fleet.run("device", "list", "--state", "sideways", ok=False)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "pending, online" in bad.stderr


def test_a_shared_hostname_says_which_ids_it_could_mean(fleet: Fleet) -> None:
    p = fleet.run("device", "revoke", "desk", ok=False)
    assert p.returncode != 0
    assert "ambiguous" in p.stderr
    assert all(i in p.stderr for i in fleet.desks)
    assert len(p.stderr.strip().splitlines()) == 1


def test_id_prefixes_are_accepted(fleet: Fleet) -> None:
    cvd = fleet.json("cvd", "show", fleet.cvds[0][:8])
    assert cvd["id"] == fleet.cvds[0]
    task = fleet.json("cvd", "sync", fleet.cvds[0][:8])
    shown = fleet.json("task", "show", task["id"][:6])
    assert shown["id"] == task["id"]
    missing = fleet.run("task", "show", "ffffffffff", ok=False)
    assert missing.returncode != 0 and "no task" in missing.stderr


def test_cvd_list_table_and_state_filter(fleet: Fleet) -> None:
    out = fleet.run("cvd", "list", "--state", "online").stdout
    header, *rows = out.strip().splitlines()
    for col in ("NAME", "HOSTNAME", "STATE", "POLICY", "LAST SYNC", "SNAPSHOTS", "LAYERS", "AGENT"):
        assert col in header
    assert len(rows) == 2
    assert {r.split()[0] for r in rows} == {c[:8] for c in fleet.cvds}
    assert fleet.json("cvd", "list", "--state", "pending") == []


def test_status_prints_the_dashboards_counts_and_usage(fleet: Fleet) -> None:
    doc = fleet.json("status")
    assert doc["counts"]["online"] == 2 and doc["counts"]["pending"] == 1
    assert doc["usage"]["snapshots"] == 2
    assert doc["usage"]["pack_bytes"] > 0 and "reduction" in doc["usage"]
    out = fleet.run("status").stdout
    assert "2 online" in out and "1 pending" in out and "0 low disk" in out
    assert "deduplication" in out


def test_event_list_and_ack(fleet: Fleet) -> None:
    engine = make_engine(f"sqlite:///{(fleet.live.data / 'lamina.db').resolve()}")
    with write_tx(engine) as c:
        record(c, "warning", "agent", "desk", "disk low: 1.2 GiB free")
    engine.dispose()
    [ev] = fleet.json("event", "list", "--pending")
    assert ev["severity"] == "warning"
    out = fleet.run("event", "list").stdout
    assert "SEVERITY" in out.splitlines()[0] and "disk low" in out
    assert fleet.json("status")["events"]["warning"] == 1
    assert "acknowledged by admin" in fleet.run("event", "ack", str(ev["id"])).stdout
    assert fleet.json("event", "list", "--pending") == []


def test_task_watch_off_a_terminal_prints_one_line_per_change(fleet: Fleet) -> None:
    task = fleet.json("cvd", "sync", fleet.cvds[1])
    # Nobody runs the task: it stays queued, and watching it prints that once.
    p = fleet.run("task", "watch", task["id"], "--timeout", "1s", "--interval", "0.2")
    [line] = p.stderr.splitlines()
    assert line.startswith("queued 0%")
    assert "\r" not in p.stderr
    assert task["id"] in p.stdout


def test_progress_is_text() -> None:
    p = {
        "phase": "centralizing",
        "percent": 42,
        "files": 10,
        "total_files": 20,
        "bytes": 2048,
        "total_bytes": 4096,
        "uploaded": 1024,
    }
    assert progress_text(p) == (
        "centralizing, 42%, 10 of 20 files, 2.0 KiB of 4.0 KiB read, 1.0 KiB uploaded"
    )
    assert progress_text({"phase": "syncing", "files": 3, "bytes": 10}) == (
        "syncing, 3 files, 10 B read"
    )


def test_one_call_commands_print_the_answer_or_give_it_as_json(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The commands made by ``cli/api_commands.py``: list, show, an action posted with an
    option, a call below the thing, and both kinds of delete (with and without --json)."""
    admin = fleet.live.login()
    admin.post("/users", json={"name": "carol", "password": "carol-password-1", "role": "readonly"})
    assert fleet.run("user", "disable", "carol").stdout == "user carol disabled\n"
    assert fleet.json("user", "enable", "carol")["disabled"] is False
    rows = fleet.json("user", "list")
    assert {"carol", "admin"} <= {r["name"] for r in rows}
    assert "carol" in fleet.run("user", "list").stdout

    fleet.run("group", "create", "sales", "--member", "carol")
    assert fleet.json("group", "show", "sales")["members"] == ["carol"]
    assert fleet.run("group", "list").stdout.split() == ["sales", "carol"]
    assert fleet.run("group", "delete", "sales").stdout == "group sales deleted\n"
    gone = fleet.run("group", "show", "sales", ok=False)
    assert gone.returncode == 3 and len(gone.stderr.splitlines()) == 1

    (tmp_path / "lib" / "firmware").mkdir(parents=True)
    (tmp_path / "lib" / "firmware" / "wifi.bin").write_bytes(b"firmware")
    fleet.run("driver", "import", "wifi", str(tmp_path))
    fleet.run(
        "driver", "profile", "create", "lenovo", "--pack", "wifi", "--match", "sys_vendor=LENOVO"
    )
    assert fleet.run("driver", "profile", "test", "lenovo").stdout == "0 device(s) match\n"
    assert fleet.json("driver", "profile", "test", "lenovo") == []
    deleted = fleet.json("driver", "profile", "delete", "lenovo")
    assert deleted["name"] == "lenovo"
    assert fleet.json("driver", "profile", "list") == []
    assert fleet.run("driver", "delete", "wifi").stdout == "driver pack wifi deleted\n"

    task = fleet.json("cvd", "sync", fleet.cvds[0])
    cancelled = fleet.json("task", "cancel", task["id"])
    assert (cancelled["id"], cancelled["state"]) == (task["id"], "cancelled")
