"""Layers end to end through the CLI, with real agents on directory endpoints and a real
dpkg database: capture a base layer, record an app layer that installs a package,
assign both to another endpoint (dry run, stage, boot-apply), then a base-layer update
whose config change merges three ways with the user's edit."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina.store.chunker import Chunker
from lamina.store.keys import read_keyfile
from tests.e2e.conftest import Deployment, Lamina
from tests.e2e.debs import build_deb, dpkg_install, dpkg_installed, init_dpkg
from tests.e2e.endpoints import make_endpoint

CONF_V1 = "".join(f"option{i} = {i}\n" for i in range(1, 21))


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.e2e
def test_capture_record_assign_apply_update(
    embedded: Deployment, person: Callable[[str], Lamina], tmp_path: Path
) -> None:
    admin = person("admin").login(embedded.url)
    admin.run("policy", "create", "std", "--keep-last", "20")
    ref_token = admin.json("token", "create", "--policy", "std", "--reference")["token"]
    token = admin.json("token", "create", "--policy", "std")["token"]
    debs = tmp_path / "debs"
    debs.mkdir()

    # --- the reference machine: an OS with a dpkg database -----------------------------
    ref = make_endpoint(tmp_path / "ref", "ref-01", "admin")
    init_dpkg(ref)
    base_v1 = build_deb(
        debs,
        "base-tools",
        "1.0",
        {"/usr/bin/base-tool": "#!/bin/sh\necho v1\n", "/etc/base-tool.conf": CONF_V1},
    )
    dpkg_install(ref, base_v1)
    huge = bytearray(os.urandom(6 * 1024 * 1024))
    (ref / "usr/lib/libhuge.so").write_bytes(huge)
    ref_state, ref_agent = tmp_path / "ref-state", person("ref-agent")
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

    base = admin.json(
        "layer", "capture", "ref-01", "--name", "debian-base", "--notes", "golden image"
    )
    assert base["kind"] == "base" and base["versions"][0]["apps"]["packages"] == {
        "base-tools": "1.0"
    }
    assert base["versions"][0]["files"] > 100

    # --- record an app layer: install a package on the reference ------------------------
    admin.run("layer", "record", "start", "ref-01")
    ref_agent.run("agent", "run", "--once", "--state", str(ref_state))
    editor = build_deb(
        debs,
        "editor-pro",
        "2.0",
        {
            "/usr/bin/editor-pro": b"\x7fELF editor " * 5000,
            "/usr/lib/editor-pro/plugins.so": b"plugins" * 3000,
        },
        desktop="Editor Pro",
    )
    dpkg_install(ref, editor)
    doomed = sorted((ref / "usr/share/doc/pkg").glob("file*.txt"))[0]
    doomed_rel = "/" + str(doomed.relative_to(ref))
    doomed.unlink()
    admin.run("layer", "record", "finalize", "ref-01", "--name", "editor")
    ref_agent.run("agent", "run", "--once", "--state", str(ref_state))
    app = next(layer for layer in admin.json("layer", "list") if layer["name"] == "editor")
    v = app["versions"][0]
    assert app["kind"] == "app"
    assert v["apps"]["packages"] == {"editor-pro": "2.0"} and v["apps"]["desktop"] == ["Editor Pro"]
    assert doomed_rel in v["whiteouts"]
    assert v["files"] < 20  # only what the install changed

    # --- a second endpoint with its own user, identity and software ---------------------
    tgt = make_endpoint(tmp_path / "tgt", "desk-09", "carol")
    init_dpkg(tgt)
    dpkg_install(tgt, base_v1)
    dpkg_install(
        tgt, build_deb(debs, "user-game", "0.9", {"/usr/games/user-game": "#!/bin/sh\necho fun\n"})
    )
    (tgt / "home/carol/Documents/thesis.txt").write_text("carol's own work\n")
    user_data = {p: _sha(p) for p in (tgt / "home").rglob("*") if p.is_file()}
    identity = {p: p.read_text() for p in (tgt / "etc/hostname", tgt / "etc/machine-id")}
    state, agent = tmp_path / "tgt-state", person("tgt-agent")
    agent.run(
        "agent",
        "enroll",
        "--server",
        embedded.url,
        "--token",
        token,
        "--root",
        str(tgt),
        "--state",
        str(state),
    )
    agent.run("agent", "run", "--once", "--state", str(state))

    [plan] = admin.json(
        "layer", "assign", "desk-09", "--base", "debian-base", "--app", "editor", "--dry-run"
    )
    actions = {i["path"]: i["action"] for i in plan["items"]}
    assert plan["status"] == "dry-run"
    assert actions["/usr/bin/editor-pro"] == "added" and actions[doomed_rel] == "removed"
    assert actions["/var/lib/dpkg/status"] == "merged"
    assert not any(p.startswith(("/home/", "/etc/hostname", "/etc/machine-id")) for p in actions)
    assert plan["download_bytes"] > 0 and plan["space_needed"] >= plan["download_bytes"]
    assert not (tgt / "usr/bin/editor-pro").exists()  # a dry run moves nothing

    [assigned] = admin.json(
        "layer", "assign", "desk-09", "--base", "debian-base", "--app", "editor"
    )
    assert assigned["status"] == "assigned" and assigned["task"]
    agent.run("agent", "run", "--once", "--state", str(state))
    task = admin.json("task", "show", assigned["task"])
    assert task["state"] == "waiting"
    assert not (tgt / "usr/bin/editor-pro").exists()  # staged, not applied
    agent.run("agent", "boot", "--state", str(state))
    for rel in (
        "usr/bin/editor-pro",
        "usr/lib/editor-pro/plugins.so",
        "usr/share/applications/editor-pro.desktop",
    ):
        assert _sha(tgt / rel) == _sha(ref / rel), rel  # bit for bit
    assert not (tgt / doomed_rel.lstrip("/")).exists()  # the whiteout applied
    assert dpkg_installed(tgt) == {"base-tools": "1.0", "editor-pro": "2.0", "user-game": "0.9"}
    assert {p: _sha(p) for p in (tgt / "home").rglob("*") if p.is_file()} == user_data
    assert {p: p.read_text() for p in identity} == identity
    assert (tgt / "usr/games/user-game").exists()
    agent.run("agent", "run", "--once", "--sync", "--state", str(state))
    assert admin.json("task", "show", assigned["task"])["state"] == "done"
    assert admin.json("cvd", "layers", "desk-09") == {
        "id": admin.json("cvd", "show", "desk-09")["id"],
        "assigned": ["debian-base:1", "editor:1"],
        "running": ["debian-base:1", "editor:1"],
    }

    # --- base layer v2: a config change merges with the user's edit ------------------------
    conf_v2 = CONF_V1.replace("option18 = 18", "option18 = eighteen")
    dpkg_install(
        ref,
        build_deb(
            debs,
            "base-tools",
            "1.1",
            {"/usr/bin/base-tool": "#!/bin/sh\necho v2\n", "/etc/base-tool.conf": conf_v2},
        ),
    )
    (ref / "etc/app/app.conf").write_text("[main]\nmode = production\nworkers = 8\n")
    huge[3_000_000:3_065_536] = os.urandom(65_536)  # a patch touches 64 KiB of a 6 MiB library
    (ref / "usr/lib/libhuge.so").write_bytes(huge)
    ref_agent.run("agent", "run", "--once", "--sync", "--state", str(ref_state))
    v2 = admin.json("layer", "capture", "ref-01", "--update", "debian-base")
    assert [x["version"] for x in v2["versions"]] == [1, 2]
    (tgt / "etc/base-tool.conf").write_text(CONF_V1.replace("option2 = 2", "option2 = carol"))
    (tgt / "etc/app/app.conf").write_text("[main]\nmode = production\nworkers = 16\n")
    agent.run("agent", "run", "--once", "--sync", "--state", str(state))
    [dry] = admin.json(
        "layer", "assign", "desk-09", "--base", "debian-base:2", "--app", "editor", "--dry-run"
    )
    acts = {i["path"]: i["action"] for i in dry["items"]}
    assert acts["/etc/base-tool.conf"] == "merged"
    assert acts["/etc/app/app.conf"] == "merge-conflict"
    assert acts["/usr/bin/base-tool"] == "updated"
    [v2_assign] = admin.json(
        "layer", "assign", "desk-09", "--base", "debian-base:2", "--app", "editor"
    )
    agent.run("agent", "run", "--once", "--state", str(state))
    delivered = admin.json("task", "show", v2_assign["task"])["result"]
    # The rest of the library comes from the endpoint's own copy. Where chunks are cut depends on the store's secret seed, so which bytes of the
    # library are "changed" is computed with the store's own chunker, for any seed.
    chunker = Chunker(read_keyfile(embedded.servers[0].data / "keys.json").chunking)
    old_chunks = {bytes(c) for c in chunker.cut((tgt / "usr/lib/libhuge.so").read_bytes())}
    new_chunks = {bytes(c) for c in chunker.cut(bytes(huge))}
    kept = sum(len(c) for c in new_chunks & old_chunks)
    assert delivered["seeded_bytes"] >= kept
    # Not even the changed chunks whole: the library's new version comes as a delta against
    # the endpoint's copy (about the 64 KiB rewritten), with the few KiB of the other files
    # and trees that changed: bytes on the wire, as the agent received them.
    assert delivered["delta_files"] >= 1
    assert 65_536 <= delivered["downloaded_bytes"] < 65_536 + 32 * 1024
    agent.run("agent", "boot", "--state", str(state))
    assert (tgt / "usr/lib/libhuge.so").read_bytes() == bytes(huge)
    merged = (tgt / "etc/base-tool.conf").read_text()
    assert "option2 = carol" in merged and "option18 = eighteen" in merged
    assert (
        (tgt / "etc/app/app.conf").read_text().endswith("workers = 16\n")
    )  # the user's file stays
    assert (
        (tgt / "etc/app/app.conf.lamina-layer").read_text().endswith("workers = 8\n")
    )  # the layer's beside it
    assert (tgt / "usr/bin/base-tool").read_text() == "#!/bin/sh\necho v2\n"
    assert dpkg_installed(tgt) == {"base-tools": "1.1", "editor-pro": "2.0", "user-game": "0.9"}
    assert {p: _sha(p) for p in (tgt / "home").rglob("*") if p.is_file()} == user_data

    # Enforce, removing software installed outside the layers.
    agent.run("agent", "run", "--once", "--sync", "--state", str(state))
    enforced = admin.json("layer", "enforce", "desk-09", "--remove-user-apps")
    assert any(
        i["path"] == "/usr/games/user-game" and i["action"] == "removed" for i in enforced["items"]
    )
    agent.run("agent", "run", "--once", "--state", str(state))
    agent.run("agent", "boot", "--state", str(state))
    assert not (tgt / "usr/games/user-game").exists()
    assert dpkg_installed(tgt) == {"base-tools": "1.1", "editor-pro": "2.0"}
    assert (
        (tgt / "etc/app/app.conf").read_text().endswith("workers = 8\n")
    )  # the layer's version again
    assert {p: _sha(p) for p in (tgt / "home").rglob("*") if p.is_file()} == user_data
