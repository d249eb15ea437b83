"""An administrator's day in a real headless Chromium, against a real server and agent.

Log in, create a policy and an enrollment token, see the pending device on the
dashboard, centralize it, watch its first sync finish on the Tasks page, browse
the snapshot and download a file and folders (bytes compared), capture a base
layer, read the assignment's dry run and assign it; import a driver pack and test
a profile, read a migration's and a provisioning's dry run, make a flex policy and
a group; count the store as a server task; then a read-only user's view. axe-core runs on every page (no serious or critical violation), no page
logs a CSP violation, and no user text (a hostname, a file name, audit entries
with ``<script>``) runs as script. Screenshots go to docs/console/.
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from tests.console.conftest import Browser, api, enroll, record_event
from tests.e2e.conftest import ADMIN_PASSWORD, LAMINA, Lamina, ServerProc
from tests.e2e.endpoints import make_endpoint

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
XSS = "<script>alert(1)</script>"
FILE_XSS = "<img src=x onerror=alert(2)><script>alert(3)<script>.txt"  # no "/" in a name


def login(b: Browser, user: str, password: str) -> None:
    b.go("/")
    b.page.get_by_label("User").fill(user)
    b.page.get_by_label("Password").fill(password)
    b.page.get_by_role("button", name="Log in", exact=True).click()
    b.page.get_by_role("button", name="Log out", exact=True).wait_for()


def test_an_administrators_day_in_chromium(
    server: ServerProc, browser: Browser, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    b, page = browser, browser.page
    b.go("/")
    b.check("login")
    login(b, "admin", ADMIN_PASSWORD)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    b.check("dashboard-empty")

    # A policy and an enrollment token, from their pages.
    b.go("/policies")
    page.get_by_label("Name").fill("standard")
    page.get_by_role("button", name="Create policy", exact=True).click()
    expect(page.get_by_role("link", name="standard", exact=True)).to_be_visible()
    b.check("policies")
    b.go("/tokens")
    page.get_by_label("How many devices may enroll with it").fill("2")
    page.get_by_role("button", name="Create token", exact=True).click()
    token = page.get_by_label("Token", exact=True).input_value()
    assert token.startswith("lme_")
    page.get_by_role("button", name="Copy", exact=True).click()
    expect(page.get_by_role("button", name="Copied", exact=True)).to_be_visible()
    expect(page.get_by_role("cell", name="0 of 2", exact=True)).to_be_visible()
    b.check()

    # Two endpoints enroll: a real agent on a folder, and one with a hostile model name
    # (the server refuses markup in a hostname).
    root = make_endpoint(tmp_path / "desk-01", "desk-01", "alice")
    docs = root / "home/alice/Documents"
    (docs / FILE_XSS).write_text("a file name that is not markup\n")
    state = tmp_path / "desk-01-state"
    agent = Lamina(tmp_path / "agent")
    agent.run("agent", "enroll", "--server", server.url, "--token", token,
              "--root", str(root), "--state", str(state))  # fmt: skip
    enroll(server.url, token, "xss-01", model=XSS)

    b.go("/")
    pending = page.locator(".count.pending")
    expect(pending.locator(".n")).to_have_text("2")
    pending.get_by_role("link").click()
    expect(page.get_by_text("2 devices pending")).to_be_visible()
    expect(page.get_by_role("cell", name=XSS, exact=True)).to_have_count(1)  # the model
    b.check("devices")

    # Centralize desk-01 as a reference machine.
    page.get_by_role("link", name="Centralize desk-01", exact=True).click()
    page.get_by_label("Policy").select_option(label="standard (every 60 min)")
    page.get_by_label("Reference machine (layers are captured from it)").check()
    b.check("centralize")
    page.get_by_role("button", name="Centralize", exact=True).click()
    expect(page.get_by_role("heading", name="CVD desk-01")).to_be_visible()
    cvd_url = page.url

    # Sync now, confirmed; then watch the task finish on the Tasks page as the agent works.
    page.get_by_role("link", name="Sync now", exact=True).click()
    expect(page.get_by_text("uploads a new snapshot of desk-01")).to_be_visible()
    b.check("confirm")
    page.get_by_role("button", name="Sync now", exact=True).click()
    expect(page.locator("#task-state")).to_have_text("queued")
    b.go("/tasks")
    row = page.locator("#tasks-live tbody tr").filter(has_text="sync")
    expect(row.locator(".state")).to_have_text("queued")
    run = subprocess.Popen(
        [*LAMINA, "agent", "run", "--once", "--state", str(state)],
        env=agent.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # htmx reloads the list by itself: no page load between "queued" and "done".
        expect(row.locator(".state")).to_have_text("done", timeout=240_000)
    finally:
        _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err.decode()
    b.check("tasks")

    # The snapshot, browsed; a file and the folder downloaded, bytes compared.
    page.goto(cvd_url)
    expect(page.get_by_role("heading", name="Snapshots")).to_be_visible()
    b.check("cvd")
    page.get_by_role("link", name="Browse files").first.click()
    for folder in ("home/", "alice/", "Documents/"):
        page.get_by_role("link", name=folder, exact=True).click()
    expect(page.get_by_role("cell", name=FILE_XSS, exact=True)).to_be_visible()
    b.check("files")
    file_url = page.get_by_role("link", name="Download thesis.txt", exact=True).get_attribute(
        "href"
    )
    tar_url = page.get_by_role("link", name="Download folder as .tar").get_attribute("href")
    files_url = page.url
    with page.expect_download() as dl:
        page.get_by_role("link", name="Download thesis.txt", exact=True).click()
    assert Path(dl.value.path()).read_bytes() == (docs / "thesis.txt").read_bytes()
    with page.expect_download() as dl:
        page.get_by_role("link", name="Download folder as .tar", exact=True).click()
    with tarfile.open(dl.value.path()) as tar:
        member = tar.extractfile("Documents/photo.raw")
        assert member is not None and member.read() == (docs / "photo.raw").read_bytes()
        assert tar.getmember("Documents/thesis.txt").uid == 1000
    with page.expect_download() as dl:
        page.get_by_role("link", name="Download folder as .zip", exact=True).click()
    with zipfile.ZipFile(io.BytesIO(Path(dl.value.path()).read_bytes())) as z:
        assert z.read("Documents/photo.raw") == (docs / "photo.raw").read_bytes()
        assert z.read(f"Documents/{FILE_XSS}") == b"a file name that is not markup\n"
    reads = [(e["action"], e["detail"].get("path"), e["detail"].get("paths"))
             for e in api(server.url).get("/audit").json() if e["actor"] == "admin"]  # fmt: skip
    assert ("cvd.download", "home/alice/Documents/thesis.txt", None) in reads
    folder = ("cvd.restore_download", None, ["home/alice/Documents"])
    assert reads.count(folder) == 2  # the .tar and the .zip

    # Restore one file onto the endpoint, from the portal, after reading what will happen.
    page.get_by_role("link", name="Restore thesis.txt").click()
    expect(page.get_by_text("home/alice/Documents/thesis.txt”")).to_be_visible()
    b.check("confirm-restore")
    page.get_by_role("button", name="Restore", exact=True).click()
    expect(page.get_by_role("heading", name="Task restore")).to_be_visible()
    (restore,) = a_tasks(server, "restore")
    assert restore["params"]["paths"] == ["home/alice/Documents/thesis.txt"]

    # A base layer captured from the reference CVD; its assignment's dry run read, then assigned.
    b.go("/layers")
    expect(page.get_by_text("No layers yet")).to_be_visible()
    page.get_by_label("Reference CVD", exact=True).fill("desk-01")
    page.get_by_label("New layer name").first.fill("base-1")
    page.get_by_role("button", name="Capture", exact=True).click()
    expect(page.get_by_role("heading", name="Layer base-1 base")).to_be_visible()
    b.check("layer")
    b.go("/layers")
    b.check("layers")
    # The endpoint then drifts from the layer: a program of the layer is changed, and synced.
    drifted = sorted(p for p in (root / "usr/bin").iterdir() if p.is_file())[0]
    drifted.write_bytes(b"changed on the endpoint\n")
    agent.run("agent", "run", "--once", "--sync", "--state", str(state))
    page.goto(cvd_url)
    page.get_by_role("link", name="Assign layers", exact=True).click()
    page.get_by_label("Base layer").select_option("base-1:1")
    b.check("assign")
    page.get_by_role("button", name="Show the dry run", exact=True).click()
    expect(page.get_by_role("heading", name="Dry run: base-1:1 on desk-01")).to_be_visible()
    table = page.get_by_role("table")
    expect(table.get_by_role("columnheader", name="Action")).to_be_visible()
    row = table.get_by_role("row").filter(has_text=f"usr/bin/{drifted.name}")
    expect(row).to_have_count(1)  # the drifted file, with what assigning does to it
    assert row.locator(".state").inner_text() in ("updated", "conflict", "merged", "blocked")
    assert a_tasks(server, "layer-apply") == []  # reading the dry run changed nothing
    b.check("dry-run")
    page.get_by_role("button", name="Assign", exact=True).click()
    expect(page.get_by_role("heading", name="Task layer-apply")).to_be_visible()
    assert len(a_tasks(server, "layer-apply")) == 1

    # The same for a collection: its members' dry runs, one table each.
    b.go("/collections")
    page.get_by_label("Name", exact=True).fill("desks")
    page.get_by_label("Static members (CVD names, one per line)").fill("desk-01")
    page.get_by_role("button", name="Create collection", exact=True).click()
    expect(page.get_by_role("cell", name="desks", exact=True)).to_be_visible()
    b.go("/layers")
    page.get_by_role("link", name="Assign layers to a collection", exact=True).click()
    page.get_by_label("Collection").select_option("desks")
    page.get_by_label("Base layer").select_option("base-1:1")
    page.get_by_role("button", name="Show the dry run", exact=True).click()
    expect(
        page.get_by_role("heading", name="Dry run: base-1:1 on collection desks")
    ).to_be_visible()
    expect(page.get_by_role("heading", name="desk-01", exact=True)).to_be_visible()
    b.check("dry-run-collection")
    assert len(a_tasks(server, "layer-apply")) == 1

    # Enforce the assigned layers, confirmed.
    page.goto(cvd_url)
    page.get_by_role("link", name="Enforce", exact=True).click()
    expect(page.get_by_text("Every file of the assigned layers (base-1:1)")).to_be_visible()
    page.get_by_role("button", name="Enforce", exact=True).click()
    expect(page.get_by_role("heading", name="Task layer-apply")).to_be_visible()
    assert len(a_tasks(server, "layer-apply")) == 2

    # The driver library: a pack imported from its .tar, a profile for the hostile model,
    # and its test listing the device it matches.
    b.go("/drivers")
    expect(page.get_by_text("No driver pack yet")).to_be_visible()
    pack = tmp_path / "rtl.tar"
    with tarfile.open(pack, "w") as t:
        fw = b"fw" * 100
        info = tarfile.TarInfo("lib/firmware/rtl_nic/rtl8168h-2.fw")
        info.size = len(fw)
        t.addfile(info, io.BytesIO(fw))
    page.get_by_label("Pack name").fill("rtl")
    page.get_by_label("Archive").set_input_files(str(pack))
    page.get_by_role("button", name="Import pack", exact=True).click()
    expect(page.get_by_role("heading", name="Driver pack rtl")).to_be_visible()
    b.check("driver-pack")
    b.go("/drivers")
    page.get_by_label("Name", exact=True).fill("hostile-model")
    page.get_by_role("textbox", name=re.compile("^Packs")).fill("rtl")
    page.get_by_role("textbox", name=re.compile("^Matches")).fill("model=<script>*")
    page.locator("#prof-notes").fill(XSS)
    page.get_by_role("button", name="Create profile", exact=True).click()
    expect(page.get_by_role("heading", name="Driver profile hostile-model")).to_be_visible()
    page.get_by_role("link", name="Test: devices it matches").click()
    expect(page.get_by_role("listitem").filter(has_text="xss-01")).to_have_count(1)
    b.check("driver-profile")
    b.go("/drivers")
    b.check("drivers")

    # Migrate desk-01 onto the pending xss-01: the dry run read (the pack its hardware gets,
    # the hardware-bound paths it keeps), not confirmed. Then provisioning's dry run.
    page.goto(cvd_url)
    page.get_by_role("link", name="Migrate", exact=True).click()
    b.check("migrate")
    page.get_by_role("button", name="Dry run", exact=True).click()
    expect(page.get_by_role("heading", name="Dry run: Migrate desk-01 to xss-01")).to_be_visible()
    expect(page.get_by_role("definition").filter(has_text="rtl")).to_have_count(1)
    expect(page.get_by_role("heading", name=re.compile("^Hardware-bound"))).to_be_visible()
    expect(page.get_by_role("button", name="Migrate", exact=True)).to_be_visible()
    b.check("migrate-dry-run")
    assert a_tasks(server, "migrate") == []
    b.go("/devices?state=pending")
    page.get_by_role("link", name="Provision xss-01", exact=True).click()
    expect(page.get_by_role("heading", name="Hardware", exact=True)).to_be_visible()
    b.check("provision")
    page.get_by_role("button", name="Dry run", exact=True).click()
    expect(page.get_by_role("heading", name="Dry run: Provision xss-01")).to_be_visible()
    b.check()

    # Flex: a restriction policy and a group made from their pages; every flex page checked.
    b.go("/flex")
    expect(page.get_by_text("No flex image yet")).to_be_visible()
    b.check("flex-images")
    b.go("/flex/policies")
    page.get_by_label("Name", exact=True).fill("strict")
    page.get_by_label("Shared folder").select_option("ro")
    page.get_by_label("Message shown to the user at start").fill(XSS)
    page.get_by_role("button", name="Create policy", exact=True).click()
    expect(page.get_by_role("heading", name="Flex policy strict")).to_be_visible()
    expect(page.get_by_role("definition").filter(has_text=XSS)).to_have_count(1)
    b.check("flex-policy")
    b.go("/groups")
    page.get_by_label("Name", exact=True).fill("field")
    page.get_by_label("Members").fill("admin")
    page.get_by_role("button", name="Create group", exact=True).click()
    expect(page.get_by_role("cell", name="field", exact=True)).to_be_visible()
    b.check("groups")
    # An image uploaded from a file by the browser (streamed, its SHA-256 checked), an
    # entitlement to it, then its image and policy changed on their own page.
    disk = tmp_path / "desk.raw"
    disk.write_bytes(bytes(range(256)) * 4096)
    b.go("/flex")
    page.get_by_label("Image name").last.fill("desk")
    page.get_by_label("SHA-256 of the file").last.fill(
        hashlib.sha256(disk.read_bytes()).hexdigest()
    )
    page.get_by_label("Disk file").set_input_files(disk)
    page.get_by_role("button", name="Upload image", exact=True).click()
    expect(page.get_by_role("heading", name="Flex image desk")).to_be_visible()
    b.check("flex-image")
    b.go("/flex/entitlements")
    page.get_by_label("Name", exact=True).fill("desk-field")
    page.get_by_label("Groups (one per line)").last.fill("field")
    page.get_by_role("button", name="Entitle", exact=True).click()
    expect(page.get_by_role("cell", name="desk-field", exact=True)).to_be_visible()
    page.get_by_role("link", name="Change image or policy of desk-field").click()
    page.get_by_label("Image").select_option("desk:1")
    b.check("flex-entitlement-change")
    page.get_by_role("button", name="Change entitlement", exact=True).click()
    expect(page.get_by_role("cell", name="desk:1", exact=True)).to_be_visible()
    for path, shot in (("/flex/policies", "flex-policies"), ("/flex/entitlements",
                       "flex-entitlements"), ("/flex/instances", "flex-instances")):  # fmt: skip
        b.go(path)
        b.check(shot)

    # An event on the dashboard, acknowledged from there.
    record_event(server, "error", "desk-01", f"disk failing {XSS}")
    b.go("/")
    expect(page.locator(".count.error .n")).to_have_text("1")
    expect(page.get_by_role("cell", name=f"disk failing {XSS}", exact=True)).to_be_visible()
    page.get_by_role("button", name="Acknowledge event 1").click()
    expect(page.locator(".count.error .n")).to_have_text("0")
    b.go("/events")
    expect(page.get_by_text("by admin")).to_be_visible()
    b.check("events")

    # The other pages, each checked.
    for path, shot in (("/audit", "audit"), ("/collections", "collections"),
                       ("/rules?cvd=desk-01", "rules"), ("/users", "users"), ("/", "dashboard")):  # fmt: skip
        b.go(path)
        b.check(shot)
    expect(page.locator(".count.online .n")).to_have_text("1")
    b.go("/audit?action=device.*")
    expect(page.get_by_role("cell", name="device xss-01", exact=True)).to_be_visible()
    expect(page.locator("code", has_text=XSS)).to_have_count(1)  # the model, as text
    b.check()
    page.set_viewport_size({"width": 390, "height": 844})
    b.go("/")
    b.check("dashboard-phone")
    page.set_viewport_size({"width": 1200, "height": 800})

    # An enrollment token made for one device, revoked from the Tokens page.
    b.go("/tokens")
    page.get_by_role("button", name="Create token", exact=True).click()
    expect(page.get_by_role("cell", name="0 of 1", exact=True)).to_be_visible()
    expect(page.get_by_role("cell", name="2 of 2", exact=True)).to_be_visible()
    page.get_by_role("button", name=re.compile("^Revoke enrollment token")).click()
    expect(page.get_by_role("cell", name="revoked", exact=True)).to_be_visible()
    b.check("tokens")

    # The store counted as a server task: its report shows on the task's page when it ends.
    b.go("/store")
    b.check("store")
    page.get_by_role("button", name="Count the store", exact=True).click()
    expect(page.locator("#task-state")).to_have_text("done")
    expect(page.get_by_role("table", name="Packs by size")).to_be_visible()
    b.check("store-stats")

    # A sync asked for, then cancelled before the agent starts it.
    page.goto(cvd_url)
    page.get_by_role("link", name="Sync now", exact=True).click()
    page.get_by_role("button", name="Sync now", exact=True).click()
    expect(page.locator("#task-state")).to_have_text("queued")
    expect(page.get_by_role("button", name="Cancel task", exact=True)).to_be_visible()
    b.check("task-cancel")
    b.go("/tasks")  # cancelled from the list, with the keyboard
    page.get_by_role("button", name=re.compile("^Cancel sync task")).focus()
    page.keyboard.press("Enter")
    expect(page.locator("#task-state")).to_have_text("cancelled")
    expect(page.get_by_text("cancelled by admin")).to_be_visible()

    # A read-only user: sees the CVD, no action; an action posted anyway is refused.
    b.go("/users")
    page.get_by_label("User name").fill("reader")
    page.get_by_label("Password (8 characters or more)").fill("password-123")
    page.get_by_label("Role").select_option("readonly")
    page.get_by_role("button", name="Create user", exact=True).click()
    expect(page.get_by_role("button", name="Disable reader")).to_be_visible()
    b.check("users")
    page.get_by_role("button", name="Log out", exact=True).click()
    login(b, "reader", "password-123")
    page.goto(cvd_url)
    expect(page.get_by_role("heading", name="CVD desk-01")).to_be_visible()
    actions = (
        "Sync now",
        "Restore",
        "Revert",
        "Assign layers",
        "Enforce",
        "Archive",
        "Revoke device",
    )
    for action in actions:
        expect(page.get_by_role("link", name=action, exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("^Cancel"))).to_have_count(0)
    b.check("readonly-cvd")
    csrf = page.locator("form.logout input[name=csrf]").get_attribute("value")
    r = page.request.post(cvd_url + "/sync", form={"csrf": csrf or ""}, max_redirects=0)
    assert r.status == 403 and "may not do this" in r.text()
    assert len(a_tasks(server, "sync")) == 2  # the admin's two; none of the reader's
    # Names of files, but not their contents: no download link, and the routes refuse.
    page.goto(files_url)
    expect(page.get_by_role("cell", name="thesis.txt", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name=re.compile("^Download"))).to_have_count(0)
    b.check("readonly-files")
    for href in (file_url, tar_url):
        r = page.request.get(server.url + (href or ""), max_redirects=0)
        assert r.status == 403 and "data.read" in r.text(), href
    b.go("/tokens")
    expect(page.get_by_role("button", name=re.compile("^Revoke"))).to_have_count(0)
    b.check()
    for path in ("/drivers", "/flex/policies", "/groups", "/store"):
        b.go(path)
        expect(page.locator("main form")).to_have_count(0)  # no action of any kind
        b.check()


def a_tasks(server: ServerProc, kind: str) -> list[dict[str, object]]:
    return [t for t in api(server.url).get("/tasks").json() if t["kind"] == kind]
