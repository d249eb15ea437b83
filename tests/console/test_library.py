"""The driver library, flex and the whole-system operations (migrate, restore system, migrate
OS, provision) from the console: each page calls the API's services (what it does is read
back through the API), every action route refuses the roles the API refuses and a form
without its CSRF token, and user text (facts, notes, globs, messages) is escaped.

One in-process server for the module (``tests/server/conftest.serve``); each test makes
its own names."""

from __future__ import annotations

import functools
import hashlib
import html
import http.server
import io
import re
import shutil
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from tests.console.conftest import Console, enroll
from tests.server.conftest import ADMIN_PASSWORD, Device, Live, free_port, serve

from lamina.config import ServerSettings
from lamina.db.engine import make_engine, write_tx
from lamina.db.models import tasks
from lamina.server.console import (
    views_drivers,
    views_flex,
    views_migrate,
    views_store,
    views_upload,
)
from lamina.server.services import store_ops
from lamina.server.services.common import now
from lamina.store.blob import BlobKind
from lamina.tree.model import Entry, encode_tree

XSS = "<script>alert(1)</script>"
FACTS = {
    "sys_vendor": "LENOVO",
    "product_name": f"20XW {XSS}",
    "bios_version": "N32ET86W",
    "cpu_vendor": "GenuineIntel",
    "boot_mode": "uefi",
    "facts_format": 3,
    "network": [
        {
            "name": "enp0s31f6",
            "mac": "8c:8c:aa:01:02:03",
            "bus": "0000:00:1f.6",
            "path": "pci-0000:00:1f.6",
            "driver": "e1000e",
        }
    ],
    "disks": [{"name": "nvme0n1", "size": 512 * 10**9}],
    "os_release": {"ID": "debian", "VERSION_ID": "12"},
}


def tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def commit_system(dev: Device) -> str:
    """A snapshot with /etc/fstab (hardware-bound) and /home/u/notes.txt (user data)."""
    fstab, notes = b"UUID=1 / ext4 defaults 0 1\n", b"my notes\n"
    ids = dev.upload([(BlobKind.DATA, fstab), (BlobKind.DATA, notes)])

    def tree(entries: list[Entry]) -> bytes:
        return dev.upload([(BlobKind.TREE, encode_tree(entries))])[0]

    etc = tree([Entry(b"fstab", "file", size=len(fstab), content=[ids[0]])])
    u = tree([Entry(b"notes.txt", "file", size=len(notes), content=[ids[1]])])
    home = tree([Entry(b"u", "dir", mode=0o755, subtree=u)])
    root = tree(
        [
            Entry(b"etc", "dir", mode=0o755, subtree=etc),
            Entry(b"home", "dir", mode=0o755, subtree=home),
        ]
    )
    r = dev.client.post("/agent/commit", json={"root": root.hex(), "files": 2, "bytes": 0})
    assert r.status_code == 200, r.text
    return str(r.json()["snapshot"]["id"])


@dataclass
class Lab:
    live: Live
    url: str
    api: httpx.Client
    cvd: str  # old-pc's CVD, with a snapshot
    old: str  # old-pc's device id
    new: str  # new-pc: pending, with hardware facts
    #: one console session per user for the module (each login costs a password hash)
    consoles: dict[str, Console] = field(default_factory=dict)

    def user(self, name: str, role: str) -> str:
        password = f"{name}-password-1"
        r = self.api.post("/users", json={"name": name, "password": password, "role": role})
        assert r.status_code == 201, r.text
        return password


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    data = tmp_path_factory.mktemp("library") / "data"
    settings = ServerSettings(data=data, port=free_port(), admin_password=ADMIN_PASSWORD)
    for url in serve(settings):
        live = Live(url, data)
        api = live.login()
        old = live.device("old-pc")
        r = old.client.post(
            "/agent/config",
            json={
                "state": "idle",
                "facts": {"machine_id": "old-pc", "hostname": "old-pc", **FACTS},
            },
        )
        assert r.status_code == 200, r.text
        commit_system(old)
        token = api.post("/tokens", json={"expires_in": 3600, "uses": 5}).json()["token"]
        new = enroll(url, token, "new-pc", **{**FACTS, "product_name": "20XW T14"})
        cvd = api.get(f"/cvds/{old.cvd_id}").json()
        lab = Lab(live, url, api, old.cvd_id, cvd["device_id"], new["device_id"])
        lab.user("reader", "readonly")
        lab.user("helper", "helpdesk")
        try:
            yield lab
        finally:
            for c in live.clients:
                c.close()


def _console(lab: Lab, user: str = "admin") -> Console:
    if user not in lab.consoles:
        password = ADMIN_PASSWORD if user == "admin" else f"{user}-password-1"
        lab.consoles[user] = Console(lab.url).login(user, password)
    return lab.consoles[user]


def _escaped(page: str) -> None:
    assert "<script>alert" not in page
    assert html.escape("<script>") in page


def test_the_driver_library_imports_tests_edits_and_deletes(lab: Lab) -> None:
    admin = _console(lab)
    page = admin.get("/drivers").text
    assert "No driver pack yet" in page and "Import pack" in page
    body = tar({"lib/firmware/rtl_nic/rtl8168h-2.fw": b"fw" * 100})
    r = admin.http.post(
        "/drivers/import",
        data={"csrf": admin.csrf, "name": "rtl", "notes": f"from {XSS}"},
        files={"archive": ("rtl.tar", body, "application/x-tar")},
    )
    assert r.status_code == 303, r.text
    pack = lab.api.get("/drivers/rtl").json()
    assert r.headers["location"] == f"/drivers/packs/{pack['id']}"
    assert [v["files"] for v in pack["versions"]] == [1]
    shown = admin.get(r.headers["location"]).text
    _escaped(shown)
    assert "Version 1" in shown
    # A broken upload: the service's error, shown; nothing stored.
    r = admin.http.post(
        "/drivers/import",
        data={"csrf": admin.csrf, "name": "bad"},
        files={"archive": ("x.tar", b"not a tar" * 50, "application/x-tar")},
    )
    assert r.status_code == 400 and lab.api.get("/drivers/bad").status_code == 404

    r = admin.post(
        "/drivers/profiles",
        {"name": "t14", "packs": "rtl", "matches": "product_name=20XW*\n", "notes": XSS},
    )
    assert r.status_code == 303, r.text
    profile = lab.api.get("/driver-profiles/t14").json()
    assert profile["packs"] == ["rtl"] and profile["matches"] == ["product_name=20XW*"]
    tested = admin.get(f"/drivers/profiles/{profile['id']}?test=1").text
    _escaped(tested)
    matched = {d["hostname"] for d in lab.api.get("/driver-profiles/t14/devices").json()}
    assert "new-pc" in matched  # (old-pc too, unless the migration test replaced it)
    assert all(f"<li>{h}</li>" in tested for h in matched)
    # Edit: matches replaced, the test follows.
    r = admin.post(
        f"/drivers/profiles/{profile['id']}",
        {"packs": "rtl:1", "matches": f"product_name={XSS}*", "os_family": "", "notes": ""},
    )
    assert r.status_code == 303, r.text
    assert lab.api.get("/driver-profiles/t14").json()["packs"] == ["rtl:1"]
    tested = admin.get(f"/drivers/profiles/{profile['id']}?test=1").text
    _escaped(tested)
    assert "No pending or active device matches" in tested
    assert lab.api.get("/driver-profiles/t14/devices").json() == []
    # The pack is named by the profile: its delete is refused, with the service's reason.
    page = admin.get(f"/drivers/packs/{pack['id']}/delete").text
    assert "Delete driver pack rtl" in page
    r = admin.post(f"/drivers/packs/{pack['id']}/delete")
    assert r.status_code == 409 and "named by profile(s) t14" in r.text
    assert admin.post(f"/drivers/profiles/{profile['id']}/delete").status_code == 303
    assert admin.post(f"/drivers/packs/{pack['id']}/delete").status_code == 303
    assert lab.api.get("/drivers").json() == [] and lab.api.get("/driver-profiles").json() == []


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A 1 MiB raw disk served over HTTP, and its SHA-256 (flex registers by URL)."""
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img is needed to register a flex image: apt-get install qemu-utils")
    folder = tmp_path_factory.mktemp("images")
    disk = bytes(range(256)) * 4096
    (folder / "disk.raw").write_bytes(disk)
    handler = functools.partial(_Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/disk.raw", hashlib.sha256(disk).hexdigest()
    finally:
        httpd.shutdown()
        t.join()


def test_flex_from_images_to_instances(lab: Lab, image_url: tuple[str, str]) -> None:
    admin = _console(lab)
    assert "No flex image yet" in admin.get("/flex").text
    url, digest = image_url
    r = admin.post("/flex/images", {"name": "desk", "url": url, "sha256": digest, "cpus": "2"})
    assert r.status_code == 303, r.text
    image = lab.api.get("/flex/images/desk").json()
    assert [(v["version"], v["size"], v["cpus"]) for v in image["versions"]] == [(1, 1 << 20, 2)]
    assert "Version" in admin.get(r.headers["location"]).text
    r = admin.post("/flex/images", {"name": "bad", "url": url, "sha256": "0" * 64})
    assert r.status_code == 422 and "SHA-256" in r.text  # IntegrityError
    assert lab.api.get("/flex/images/bad").status_code == 404

    admin.get("/flex/policies")
    r = admin.post(
        "/flex/policies",
        {"name": "strict", "usb": "none", "shared_folder": "ro", "message": XSS, "lease_days": "3"},
    )
    assert r.status_code == 303, r.text
    policy = lab.api.get("/flex/policies/strict").json()
    assert policy["restrictions"]["shared_folder"] == "ro"
    assert policy["restrictions"]["message"] == XSS and policy["lease_seconds"] == 3 * 86400
    _escaped(admin.get(r.headers["location"]).text)
    r = admin.post(
        f"/flex/policies/{policy['id']}", {"usb": "all", "clipboard": "1", "lease_days": "3"}
    )
    assert r.status_code == 303, r.text
    changed = lab.api.get("/flex/policies/strict").json()["restrictions"]
    assert changed["usb"] == "all" and changed["clipboard"] is True

    bob = lab.live.login("bob", lab.user("bob", "flex-user"))
    lab.user("carol", "flex-user")
    assert admin.post("/groups", {"name": "field", "members": "carol"}).status_code == 303
    assert admin.post("/groups/field/members", {"add": "bob"}).status_code == 303
    assert lab.api.get("/groups/field").json()["members"] == ["bob", "carol"]
    admin.get("/flex/entitlements")
    r = admin.post(
        "/flex/entitlements",
        {"name": "desk-field", "image": "desk", "policy": "strict", "groups": "field"},
    )
    assert r.status_code == 303, r.text
    ent = lab.api.get("/flex/entitlements/desk-field").json()
    assert (ent["image"], ent["policy"], ent["groups"]) == ("desk", "strict", ["field"])
    # Change its image (pinned to version 1) and its policy, after the form says what follows.
    assert admin.post("/flex/policies", {"name": "loose", "lease_days": "9"}).status_code == 303
    form = admin.get(f"/flex/entitlements/{ent['id']}/change").text
    assert "get the policy chosen below at their next check-in" in form
    assert '<option value="desk:1">' in form and '<option value="loose">' in form
    r = admin.post(f"/flex/entitlements/{ent['id']}/change", {"image": "desk:1", "policy": "loose"})
    assert r.status_code == 303, r.text
    ent = lab.api.get("/flex/entitlements/desk-field").json()
    assert (ent["image"], ent["version"], ent["policy"]) == ("desk", 1, "loose")
    r = admin.post(f"/flex/entitlements/{ent['id']}/change", {"image": "desk:7", "policy": "loose"})
    assert r.status_code == 404 and lab.api.get("/flex/entitlements/desk-field").json() == ent
    r = admin.post(f"/flex/entitlements/{ent['id']}/change", {"image": "desk", "policy": "strict"})
    assert r.status_code == 303, r.text

    made = bob.post("/flex/my/instances", json={"entitlement": "desk-field", "client": "lap-1"})
    assert made.status_code == 201, made.text
    (inst,) = lab.api.get("/flex/instances").json()
    page = admin.get("/flex/instances").text
    assert f"/flex/instances/{inst['id']}/lock" in page
    # Lock with a message (through the confirmation), then revoke: the API sees each.
    assert "Message for the user" in admin.get(f"/flex/instances/{inst['id']}/lock").text
    assert admin.post(f"/flex/instances/{inst['id']}/lock", {"message": XSS}).status_code == 303
    got = lab.api.get(f"/flex/instances/{inst['id']}").json()
    assert (got["state"], got["message"]) == ("locked", XSS)
    _escaped(admin.get("/flex/instances").text)
    assert admin.post(f"/flex/instances/{inst['id']}/unlock").status_code == 303
    assert (
        admin.post(f"/flex/instances/{inst['id']}/policy", {"policy": "strict"}).status_code == 303
    )
    got = lab.api.get(f"/flex/instances/{inst['id']}").json()
    assert (got["state"], got["policy_override"]) == ("active", True)
    helper = _console(lab, "helper")  # help desk operates instances (flex.operate)
    assert (
        helper.post(f"/flex/instances/{inst['id']}/revoke", {"message": "bye"}).status_code == 303
    )
    assert lab.api.get(f"/flex/instances/{inst['id']}").json()["state"] == "revoked"
    # Entitlement, group, policy, image: deleted in that order, each after its confirmation.
    for path in (
        f"/flex/entitlements/{ent['id']}",
        "/groups/field",
        f"/flex/policies/{policy['id']}",
        f"/flex/images/{image['id']}",
    ):
        assert "Cancel" in admin.get(path + "/delete").text
        assert admin.post(path + "/delete").status_code == 303, path
    assert lab.api.get("/flex/entitlements").json() == []
    assert lab.api.get("/flex/images").json() == lab.api.get("/groups").json() == []


def _received(tmp: Path) -> list[Path]:
    """The disks left under ``DATA/flex-tmp`` (each server process's folder keeps only
    the ``owner`` file naming it)."""
    if not tmp.exists():
        return []
    return [p for p in tmp.rglob("*") if p.is_file() and p.name != "owner"]


def test_a_flex_image_uploads_from_a_file_streamed_and_checked(lab: Lab) -> None:
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img is needed to register a flex image: apt-get install qemu-utils")
    admin = _console(lab)
    assert 'enctype="multipart/form-data"' in admin.get("/flex").text
    disk = bytes(range(256)) * 8192  # 2 MiB, raw
    digest = hashlib.sha256(disk).hexdigest()
    form = {"name": "uploaded", "sha256": digest, "memory_mib": "2048", "cpus": "2"}
    tmp = lab.live.data / "flex-tmp"

    def send(c: Console, data: dict[str, str], csrf: str | None) -> httpx.Response:
        fields = {"csrf": csrf, **data} if csrf is not None else data
        return c.http.post(
            "/flex/images/upload", data=fields, files={"disk": ("disk.raw", disk, "x")}
        )

    # No token, a wrong token, a help desk user: refused, nothing kept.
    assert send(admin, form, None).status_code == 403
    r = send(admin, form, "0" * 64)
    assert r.status_code == 403 and "did not come from this console" in r.text
    helper = _console(lab, "helper")
    assert send(helper, form, helper.csrf).status_code == 403
    # A file that is not the one the form names: refused, nothing registered or kept.
    r = send(admin, {**form, "sha256": "ab" * 32}, admin.csrf)
    assert r.status_code == 422 and digest in r.text, r.text
    assert lab.api.get("/flex/images/uploaded").status_code == 404
    assert _received(tmp) == []
    r = send(admin, form, admin.csrf)
    assert r.status_code == 303, r.text
    image = lab.api.get("/flex/images/uploaded").json()
    (v,) = image["versions"]
    assert (v["size"], v["memory_mib"], v["cpus"]) == (len(disk), 2048, 2)
    assert _received(tmp) == []
    (entry,) = [
        e for e in lab.api.get("/audit").json()
        if e["action"] == "flex.image.register" and e["target"] == image["id"]
    ]  # fmt: skip
    assert (entry["detail"]["kind"], entry["detail"]["sha256"]) == ("upload", digest)
    assert admin.post(f"/flex/images/{image['id']}/delete").status_code == 303


def test_migrate_shows_its_dry_run_then_moves_the_cvd(lab: Lab) -> None:
    admin = _console(lab)
    page = admin.get(f"/cvds/{lab.cvd}").text
    for action in ("migrate", "restore-system", "migrate-os"):
        assert f'href="/cvds/{lab.cvd}/{action}"' in page
    # The device's hardware facts, as a table, escaped.
    _escaped(page)
    assert "8c:8c:aa:01:02:03" in page and "nvme0n1" in page and "uefi" in page
    # Facts format 3: each NIC's bus address, path and driver beside its name and MAC.
    row = re.search(r"<tr><td>enp0s31f6</td>.*?</tr>", page)
    assert row, page
    for shown in ("8c:8c:aa:01:02:03", "0000:00:1f.6", "pci-0000:00:1f.6", "e1000e"):
        assert shown in row.group(0)
    assert '<th scope="col">Bus address</th>' in page and '<th scope="col">Driver</th>' in page
    form = admin.get(f"/cvds/{lab.cvd}/migrate").text
    assert f'<option value="{lab.new}">new-pc' in form

    # Data only, keeping the new machine's system: nothing blocks; an active target blocks.
    r = admin.post(
        f"/cvds/{lab.cvd}/migrate/preview", {"to": lab.new, "mode": "data", "base": "keep"}
    )
    assert r.status_code == 200, r.text
    assert "Blocked" not in r.text and "/etc/fstab" in r.text
    blocked = admin.post(
        f"/cvds/{lab.cvd}/migrate/preview", {"to": lab.old, "mode": "full", "name": "moved"}
    ).text
    assert "Blocked: device old-pc is active" in blocked and ">Migrate</button>" not in blocked

    report = admin.post(
        f"/cvds/{lab.cvd}/migrate/preview", {"to": lab.new, "mode": "full", "name": "moved"}
    ).text
    assert "Dry run: Migrate old-pc to new-pc" in report
    assert "Hardware-bound" in report and "<code>/etc/fstab</code>" in report
    assert ">Migrate</button>" in report
    assert lab.api.get(f"/cvds/{lab.cvd}").json()["device_id"] == lab.old  # nothing moved yet
    hidden = dict(re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', report))
    assert hidden["to"] == lab.new and hidden["mode"] == "full" and hidden["name"] == "moved"

    # The read-only user and the help desk see no such button, and are refused.
    reader, helper = _console(lab, "reader"), _console(lab, "helper")
    assert f"/cvds/{lab.cvd}/migrate" not in reader.get(f"/cvds/{lab.cvd}").text
    assert reader.post(f"/cvds/{lab.cvd}/migrate", hidden).status_code == 403
    assert helper.post(f"/cvds/{lab.cvd}/migrate-os", {"base": "x"}).status_code == 403

    r = admin.post(f"/cvds/{lab.cvd}/migrate", {k: v for k, v in hidden.items() if k != "csrf"})
    assert r.status_code == 303 and r.headers["location"].startswith("/tasks/"), r.text
    moved = lab.api.get(f"/cvds/{lab.cvd}").json()
    assert (moved["name"], moved["device_id"]) == ("moved", lab.new)
    assert lab.api.get(f"/devices/{lab.old}").json()["status"] == "replaced"
    task = lab.api.get("/tasks/" + r.headers["location"].rsplit("/", 1)[1]).json()
    assert task["kind"] == "migrate" and task["params"]["mode"] == "full"


def test_an_api_token_made_in_the_console_acts_as_its_user(lab: Lab) -> None:
    reader = _console(lab, "reader")
    reader.get("/tokens")
    page = reader.post("/tokens/api", {"name": f"report {XSS}", "days": "7"})
    assert page.status_code == 400  # the API's name rule: no markup
    page = reader.post("/tokens/api", {"name": "weekly report", "days": "7"})
    assert page.status_code == 200, page.text
    m = re.search(r'id="new-api-token" readonly value="([^"]+)"', page.text)
    assert m, page.text
    script = lab.live.client(m.group(1))
    assert script.get("/cvds").status_code == 200
    assert script.post("/policies", json={"name": "nope"}).status_code == 403  # read-only
    (made,) = [t for t in lab.api.get("/tokens").json() if t["name"] == "weekly report"]
    assert made["owner"] == "reader" and made["kind"] == "api"


#: Every new state-changing console route, a form that passes its validation, and the
#: roles that get past the permission check (anything but 403).
ADMIN, HD = "admin", "helper"
ROUTES: list[tuple[str, dict[str, str], set[str]]] = [
    ("/tokens/api", {"name": "x"}, {"reader", ADMIN, HD}),
    ("/drivers/import", {"name": "x"}, {ADMIN}),
    ("/drivers/packs/X/delete", {}, {ADMIN}),
    ("/drivers/profiles", {"name": "x", "packs": "x", "matches": "sys_vendor=x"}, {ADMIN}),
    ("/drivers/profiles/X", {"packs": "x", "matches": "sys_vendor=x"}, {ADMIN}),
    ("/drivers/profiles/X/delete", {}, {ADMIN}),
    ("/flex/images", {"name": "x", "url": "ftp://x/y", "sha256": "0" * 64}, {ADMIN}),
    ("/flex/images/X/delete", {}, {ADMIN}),
    ("/flex/images/upload", {"name": "x", "sha256": "0" * 64}, {ADMIN}),
    ("/flex/policies", {"name": "x"}, {ADMIN}),
    ("/flex/policies/X", {}, {ADMIN}),
    ("/flex/policies/X/delete", {}, {ADMIN}),
    ("/flex/entitlements", {"name": "x", "image": "x", "policy": "x"}, {ADMIN}),
    ("/flex/entitlements/X", {}, {ADMIN}),
    ("/flex/entitlements/X/delete", {}, {ADMIN}),
    ("/flex/entitlements/X/change", {"image": "x", "policy": "x"}, {ADMIN}),
    ("/flex/instances/X/lock", {}, {ADMIN, HD}),
    ("/groups", {"name": "x", "members": "nobody"}, {ADMIN}),
    ("/groups/X/members", {"add": "nobody"}, {ADMIN}),
    ("/groups/X/delete", {}, {ADMIN}),
    ("/cvds/X/migrate/preview", {"to": "x"}, {ADMIN, HD}),
    ("/cvds/X/migrate", {"to": "x"}, {ADMIN, HD}),
    ("/cvds/X/restore-system/preview", {"to": "x"}, {ADMIN, HD}),
    ("/cvds/X/restore-system", {"to": "x"}, {ADMIN, HD}),
    ("/cvds/X/migrate-os/preview", {"base": "x"}, {ADMIN}),
    ("/cvds/X/migrate-os", {"base": "x"}, {ADMIN}),
    ("/devices/X/provision/preview", {"base": "x", "policy": "x"}, {ADMIN}),
    ("/devices/X/provision", {"base": "x", "policy": "x"}, {ADMIN}),
    ("/store/check", {}, {ADMIN}),
    ("/store/gc/preview", {}, {ADMIN}),
    ("/store/gc", {}, {ADMIN}),
    ("/store/stats", {}, {ADMIN}),
]
#: The confirmation and form pages of those actions: refused to whom the action is.
FORMS: list[tuple[str, set[str]]] = [
    ("/drivers/packs/X/delete", {ADMIN}),
    ("/drivers/profiles/X/delete", {ADMIN}),
    ("/flex/images/X/delete", {ADMIN}),
    ("/flex/policies/X/delete", {ADMIN}),
    ("/flex/entitlements/X/delete", {ADMIN}),
    ("/flex/entitlements/X/change", {ADMIN}),
    ("/flex/instances/X/revoke", {ADMIN, HD}),
    ("/flex/instances/X/policy", {ADMIN, HD}),
    ("/groups/X/delete", {ADMIN}),
    ("/cvds/X/migrate", {ADMIN, HD}),
    ("/cvds/X/restore-system", {ADMIN, HD}),
    ("/cvds/X/migrate-os", {ADMIN}),
    ("/devices/X/provision", {ADMIN}),
]


def test_every_new_action_route_is_in_the_matrix() -> None:
    probed = {p.replace("/X", "/{}") for p, _, _ in ROUTES} | {"/flex/instances/{}/{}"}
    for router in (
        views_drivers.router,
        views_flex.router,
        views_migrate.router,
        views_store.router,
        views_upload.router,
    ):
        for r in router.routes:
            assert isinstance(r, APIRoute)
            if "POST" in r.methods:
                assert re.sub(r"\{[^}]+\}", "{}", r.path) in probed, r.path


def test_roles_and_csrf_hold_on_every_new_action(lab: Lab) -> None:
    consoles = {u: _console(lab, u) for u in ("reader", HD, ADMIN)}
    for path, form, allowed in ROUTES:
        path = path.replace("X", "nope")
        for user, c in consoles.items():
            if path == "/drivers/import":
                r = c.http.post(
                    path, data={**form, "csrf": c.csrf}, files={"archive": ("a.tar", b"", "x")}
                )
            elif path == "/flex/images/upload":
                r = c.http.post(
                    path, data={**form, "csrf": c.csrf}, files={"disk": ("d.raw", b"", "x")}
                )
            else:
                r = c.post(path, form)
            assert (r.status_code != 403) == (user in allowed), (path, user, r.text[:300])
        if path == "/flex/images/upload":
            r = consoles[ADMIN].http.post(path, data=form, files={"disk": ("d.raw", b"", "x")})
        else:
            r = consoles[ADMIN].post(path, form, csrf=False)
        assert r.status_code == 403 and "did not come from this console" in r.text, path
        store_ops.wait()  # a store task the admin's probe started ends before the next
    for path, allowed in FORMS:
        for user, c in consoles.items():
            r = c.get(path.replace("X", "nope"))
            assert (r.status_code != 403) == (user in allowed), (path, user)
    # Read-only sees the new pages without a single action on them.
    reader = consoles["reader"]
    for page in (
        "/drivers",
        "/flex",
        "/flex/policies",
        "/flex/entitlements",
        "/flex/instances",
        "/groups",
        "/store",
    ):
        text = reader.get(page).text
        assert 'method="post" action="/logout"' in text
        assert text.count('method="post"') == 1, page  # only the log-out form
        assert 'class="button' not in text, page


def _task_page(c: Console, r: httpx.Response) -> str:
    """The page of the store task a form started, once the task has ended."""
    assert r.status_code == 303 and r.headers["location"].startswith("/tasks/"), r.text[:300]
    store_ops.wait(r.headers["location"].rsplit("/", 1)[1])
    return c.get(r.headers["location"]).text


def test_the_store_page_runs_check_gc_after_its_dry_run_and_stats(lab: Lab) -> None:
    admin = _console(lab)
    page = admin.get("/store").text
    for action in ("/store/check", "/store/gc/preview", "/store/stats"):
        assert f'action="{action}"' in page
    counted = _task_page(admin, admin.post("/store/stats"))
    assert "Packs by size" in counted and "Deduplication" in counted
    assert '<span class="state done" id="task-state">done</span>' in counted

    # gc: the dry run first, whose page says what it would free and offers to collect.
    dry = _task_page(admin, admin.post("/store/gc/preview"))
    assert (
        "Would free" in dry and 'action="/store/gc"' in dry and ">Collect garbage</button>" in dry
    )
    grace = re.search(r'name="orphan_grace" value="(\d+)"', dry)
    assert grace and grace.group(1) == "3600"
    done = _task_page(admin, admin.post("/store/gc", {"orphan_grace": grace.group(1)}))
    assert "Freed" in done and "Collect garbage" not in done
    checked = _task_page(admin, admin.post("/store/check"))
    assert "no errors" in checked
    tasks_seen = [t["kind"] for t in lab.api.get("/tasks").json()]
    assert {"store-stats", "store-gc", "store-check"} <= set(tasks_seen)

    # A report's text is escaped (a check's damage names snapshots and layers).
    report = {"ok": False, "errors": [f"layer {XSS}:1 misses a blob"], "errors_total": 1}
    row = {"id": "hostile-check", "kind": "store-check", "state": "failed", "progress": 50,
           "message": f"1 errors {XSS}", "params": {}, "result": report,
           "created_by": "admin", "created": now()}  # fmt: skip
    engine = make_engine(f"sqlite:///{lab.live.data / 'lamina.db'}")
    with write_tx(engine) as c:
        c.execute(tasks.insert().values(**row))
    engine.dispose()
    _escaped(admin.get("/tasks/hostile-check").text)
    _escaped(admin.get("/store").text)
    # The help desk sees the store, without a button.
    seen = _console(lab, HD).get("/store").text
    assert "Recent store tasks" in seen and 'action="/store/' not in seen
