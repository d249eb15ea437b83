"""Layers: an app layer without a base, assigned to a collection; refusal for lack of space;
a crash during the boot apply; testing rules against a snapshot."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Deployment, Lamina
from tests.e2e.debs import build_deb, dpkg_install, dpkg_installed, init_dpkg
from tests.e2e.endpoints import make_endpoint


@pytest.mark.e2e
def test_app_layer_on_a_collection_without_base(
    embedded: Deployment, person: Callable[[str], Lamina], tmp_path: Path
) -> None:
    admin = person("admin").login(embedded.url)
    admin.run("policy", "create", "std")
    ref_token = admin.json("token", "create", "--policy", "std", "--reference")["token"]
    token = admin.json("token", "create", "--policy", "std", "--uses", "3")["token"]
    ref = make_endpoint(tmp_path / "ref", "ref-02", "root")
    init_dpkg(ref)
    ref_state, ref_agent = tmp_path / "ref-state", person("ref")
    ref_agent.run(
        "agent",
        "enroll",
        "--server",
        embedded.url,
        "--token",
        ref_token,
        "--root",
        str(ref),
        "--state",
        str(ref_state),
    )
    ref_agent.run("agent", "run", "--once", "--state", str(ref_state))

    rules = admin.json("layer", "rules-test", "ref-02")
    assert rules["kept"] > 100 and rules["dropped_by_reason"]["user_data"] >= 1
    assert any(p.startswith("/home/") for p in rules["examples"]["user_data"])
    assert "/etc/machine-id" in rules["examples"]["machine_identity"]

    # A recording started by mistake is cancelled (nothing captured), then started again.
    admin.run("layer", "record", "start", "ref-02")
    cancelled = admin.json("layer", "record", "cancel", "ref-02")
    assert cancelled["state"] == "cancelled", cancelled
    refused = admin.run("layer", "record", "cancel", "ref-02", ok=False)
    assert refused.returncode != 0 and "not recording" in refused.stderr
    admin.run("layer", "record", "start", "ref-02")
    ref_agent.run("agent", "run", "--once", "--state", str(ref_state))
    debs = tmp_path / "debs"
    debs.mkdir()
    dpkg_install(
        ref,
        build_deb(
            debs, "viewer", "3.1", {f"/opt/viewer/lib{i}.so": os.urandom(40_000) for i in range(6)}
        ),
    )
    admin.run("layer", "record", "finalize", "ref-02", "--name", "viewer")
    ref_agent.run("agent", "run", "--once", "--state", str(ref_state))

    states = {}
    for host in ("desk-a", "desk-b", "lab-c"):
        root = make_endpoint(
            tmp_path / host, host, "dana", os_seed=99
        )  # another OS build: no base layer
        init_dpkg(root)
        states[host] = (root, tmp_path / f"{host}-state", person(host))
        _, st, ag = states[host]
        ag.run(
            "agent",
            "enroll",
            "--server",
            embedded.url,
            "--token",
            token,
            "--root",
            str(root),
            "--state",
            str(st),
        )
        ag.run("agent", "run", "--once", "--state", str(st))
    coll = admin.json(
        "collection", "create", "desks", "--filter", "hostname=desk-*,os_release.ID=debian"
    )
    assert sorted(coll["members"]) == ["desk-a", "desk-b"]

    # Too little space on one endpoint: refused with the report, nothing assigned there.
    root_b, st_b, _ = states["desk-b"]
    cred = json.loads((st_b / "agent.json").read_text())["credential"]
    r = httpx.post(
        f"{embedded.url}/api/v1/agent/config",
        headers={"Authorization": f"Bearer {cred}"},
        json={"state": "idle", "disk_free": 1000},
    )
    assert r.status_code == 200
    p = admin.run("layer", "assign", "--collection", "desks", "--app", "viewer", "--json", ok=False)
    assert p.returncode == 4 and "refused" in p.stderr
    plans = {x["cvd"]: x for x in json.loads(p.stdout)}
    assert plans["desk-a"]["status"] == "assigned" and plans["desk-b"]["status"] == "refused"
    assert "staging space" in plans["desk-b"]["refused"][0]
    assert admin.json("cvd", "layers", "desk-b")["assigned"] == []

    # desk-a: the boot apply crashes half way (power cut), the next boot finishes it.
    root_a, st_a, ag_a = states["desk-a"]
    ag_a.run("agent", "run", "--once", "--state", str(st_a))
    ag_a.env["LAMINA_BOOT_FAIL_AFTER"] = "3"
    crash = ag_a.run("agent", "boot", "--state", str(st_a), ok=False)
    assert crash.returncode != 0
    del ag_a.env["LAMINA_BOOT_FAIL_AFTER"]
    ag_a.run("agent", "boot", "--state", str(st_a))
    for i in range(6):
        assert (root_a / f"opt/viewer/lib{i}.so").read_bytes() == (
            ref / f"opt/viewer/lib{i}.so"
        ).read_bytes()
    assert dpkg_installed(root_a) == {"viewer": "3.1"}
    assert (root_a / "etc/hostname").read_text() == "desk-a\n"
    assert not (root_b / "opt/viewer").exists() and not (states["lab-c"][0] / "opt/viewer").exists()
