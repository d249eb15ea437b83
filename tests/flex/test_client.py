"""The flex client against a real server, real qemu-img/qemu-nbd and (for the boots) real QEMU.

One server for the module with the tiny test guest registered (see ``guest.py``); each
test downloads the instances it needs under its own user. The boots run the CLI
(``lamina flex-client launch --headless``) and read what the guest reports about itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import httpx
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lamina.cli.client import Api
from lamina.config import ServerSettings
from lamina.errors import (
    BackendError,
    ForbiddenError,
    IntegrityError,
    RateLimitedError,
    StoreKeyError,
)
from lamina.flex import disk, keywrap, qemu
from lamina.flex.client import FlexClient, LaunchOptions
from lamina.flex.folder import Instance
from lamina.flex.pins import KeyPins
from lamina.protocol.flex import FlexKeyPublic, FlexRestrictions
from tests.cli.invoke import invoke, subprocesses_wanted
from tests.flex.guest import Guest, build_guest, missing_tools, parse_report
from tests.server.conftest import ADMIN_PASSWORD, Live, free_port, serve

pytestmark = [
    pytest.mark.skipif(bool(missing_tools()), reason=f"QEMU tools missing: {missing_tools()}"),
    # one worker for the module: its server, registered guest and downloads are shared
    pytest.mark.xdist_group("flexcli"),
    pytest.mark.slow,
]

FAST = keywrap.KdfParams(time_cost=1, memory_kib=1024, parallelism=1)
PASSWORD = "laptop-pass-1"
LAMINA = [sys.executable, "-m", "lamina.cli"]
ACCEL: qemu.Accel = "kvm" if os.environ.get("LAMINA_TEST_KVM") == "1" else "tcg"


@dataclass
class Srv:
    live: Live
    admin: httpx.Client
    guest: Guest

    def user(self, name: str) -> Api:
        password = f"{name}-password-1"
        r = self.admin.post(
            "/users", json={"name": name, "password": password, "role": "flex-user"}
        )
        assert r.status_code == 201, r.text
        r = httpx.post(
            self.live.url + "/api/v1/auth/login", json={"user": name, "password": password}
        )
        assert r.status_code == 200, r.text
        return Api(self.live.url, r.json()["token"])

    def policy(self, name: str, lease_seconds: int = 3600, **restrictions: Any) -> None:
        body = {"name": name, "restrictions": restrictions, "lease_seconds": lease_seconds}
        r = self.admin.post("/flex/policies", json=body)
        assert r.status_code == 201, r.text

    def entitle(self, name: str, user: str, policy: str, **extra: Any) -> str:
        body = {"name": name, "image": "tiny", "policy": policy, "users": [user], **extra}
        r = self.admin.post("/flex/entitlements", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


@pytest.fixture(scope="module")
def guest() -> Guest:
    if os.geteuid() != 0:
        pytest.skip("building the test guest needs root (a loop mount) and apt")
    return build_guest()  # as root (CI) a guest that cannot be built fails the tests


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, guest: Guest) -> Iterator[Srv]:
    tmp = tmp_path_factory.mktemp("flexcli")
    settings = ServerSettings(
        data=tmp / "data", port=free_port(), admin_password=ADMIN_PASSWORD, workers=0
    )
    for url in serve(settings):
        live = Live(url, settings.data)
        admin = live.login()
        with open(guest.disk, "rb") as f:
            r = admin.post(
                "/flex/images/upload", params={"name": "tiny", "memory_mib": 256}, content=f
            )
        assert r.status_code == 201, r.text
        try:
            yield Srv(live, admin, guest)
        finally:
            for c in live.clients:
                c.close()


class Clock:
    def __init__(self) -> None:
        self.t = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.t

    def move(self, **kw: float) -> None:
        self.t += dt.timedelta(**kw)


class Flaky:
    """The server, but piece downloads go through ``on_piece(n, data) -> data``."""

    def __init__(self, api: Api, on_piece: Callable[[int, bytes], bytes]) -> None:
        self.api = api
        self.url = api.url
        self.on_piece = on_piece
        self.pieces: list[int] = []

    def get(self, path: str, **kw: Any) -> Any:
        doc = self.api.get(path, **kw)
        if "/pieces/" in path:
            n = int(path.rsplit("/", 1)[1])
            self.pieces.append(n)
            return self.on_piece(n, doc)
        return doc

    def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.api.post(path, json, **kw)


#: Where ``cli()``'s ``lamina`` keeps its login (``XDG_CONFIG_HOME=tmp/config``): the
#: in-process client keeps its pins and host secret there too, as the CLI does, so an
#: instance downloaded here opens when launched through the CLI (the host binding).
CONFIG = Path("config") / "lamina"


def client(tmp: Path, api: Any, clock: Clock | None = None) -> FlexClient:
    return FlexClient(
        tmp / "flex", api, tmp / CONFIG / "flex-keys.json", now=clock or Clock(), kdf=FAST
    )


def plaintext(inst_disk: Path, key: bytes, sock: Path) -> bytes:
    with disk.export(inst_disk, key, sock) as nbd:
        return nbd.read(0, nbd.size)


def unwrap(c: FlexClient, instance: str) -> bytes:
    inst = c.folder.get(instance)
    return c.unlock(inst, PASSWORD, inst.lease())


@pytest.fixture(scope="module")
def alice(srv: Srv, tmp_path_factory: pytest.TempPathFactory) -> tuple[FlexClient, str, Path]:
    """Alice's instance under a strict policy: no network, no USB, no shared folder."""
    tmp = tmp_path_factory.mktemp("alice")
    api = srv.user("alice")
    srv.policy("strict", network="none", usb="none", message="Company data: be careful")
    ent = srv.entitle("tiny-alice", "alice", "strict")
    c = client(tmp, api)
    inst = c.download(ent, PASSWORD)
    return c, inst.id, tmp


def test_download_is_encrypted_complete_and_holds_no_plaintext_sector(
    srv: Srv, alice: tuple[FlexClient, str, Path]
) -> None:
    c, instance, tmp = alice
    inst = c.folder.get(instance)
    image = srv.guest.disk.read_bytes()
    # the disk is a LUKS qcow2 and decrypts to the image, byte for byte
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(inst.disk)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert info["format"] == "qcow2" and info["encrypted"] is True
    assert info["format-specific"]["data"]["encrypt"]["format"] == "luks"
    assert plaintext(inst.disk, unwrap(c, instance), tmp / "nbd.sock") == image
    # no file under the client's folder holds a 4 KiB sector of the image: every non-zero
    # sector at every 512-byte offset, and the seeded random sectors at any byte offset
    sectors = {
        blake3.blake3(image[i : i + 4096]).digest()
        for i in range(0, len(image), 4096)
        if image[i : i + 4096].count(0) < 4096
    }
    probes = [image[o : o + 4096] for o in srv.guest.random_blocks[::16]]
    files = [p for p in (tmp / "flex").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"disk.qcow2", "key.json", "lease.json", "manifest.json"}
    for p in files:
        data = p.read_bytes()
        for off in range(0, max(len(data) - 4095, 0), 512):
            assert blake3.blake3(data[off : off + 4096]).digest() not in sectors, (p, off)
        for probe in probes:
            assert probe[:256] not in data, p
        assert oct(p.stat().st_mode & 0o777) == oct(0o600), p


def test_a_client_folder_copied_to_another_computer_does_not_open(
    srv: Srv, alice: tuple[FlexClient, str, Path], tmp_path: Path
) -> None:
    c, instance, tmp = alice
    shutil.copytree(tmp / "flex", tmp_path / "flex")
    shutil.copytree(tmp / "config", tmp_path / "config")  # even with the client secret
    secret = tmp_path / CONFIG / "flex-host.key"
    machine = keywrap.HostKey(secret).machine_id()
    other = FlexClient(
        tmp_path / "flex",
        None,
        tmp_path / CONFIG / "flex-keys.json",
        kdf=FAST,
        host=keywrap.HostKey(secret, machine_id=machine + "-elsewhere"),
    )
    inst = other.folder.get(instance)
    with pytest.raises(keywrap.HostMismatchError, match="copied from another computer"):
        other.unlock(inst, PASSWORD, inst.lease())
    assert inst.state().failed_tries == 0  # not counted as a wrong password
    # without the client secret (only the instance folder copied), refused too
    (tmp_path / "config2").mkdir()
    bare = client(tmp_path, None)
    bare.host = keywrap.HostKey(tmp_path / "config2" / "flex-host.key")
    with pytest.raises(keywrap.HostMismatchError):
        bare.unlock(inst, PASSWORD, inst.lease())
    # the same computer opens it
    assert unwrap(c, instance)
    same = FlexClient(tmp_path / "flex", None, tmp_path / CONFIG / "flex-keys.json", kdf=FAST)
    key = same.unlock(inst, PASSWORD, inst.lease())
    # a key.json of version 1 (before the host binding) opens and is rewrapped, bound here
    salt, nonce = os.urandom(16), os.urandom(12)
    ct = AESGCM(keywrap._argon(PASSWORD, salt, FAST)).encrypt(
        nonce, key, keywrap.AAD_PREFIX_V1 + instance.encode()
    )
    b64 = base64.b64encode
    v1 = keywrap.WrappedKey(
        v=1,
        time_cost=FAST.time_cost,
        memory_kib=FAST.memory_kib,
        parallelism=FAST.parallelism,
        salt=b64(salt).decode(),
        nonce=b64(nonce).decode(),
        wrapped=b64(ct).decode(),
    )
    inst.key_file.write_text(v1.model_dump_json())
    assert same.unlock(inst, PASSWORD, inst.lease()) == key
    v2 = keywrap.WrappedKey.model_validate_json(inst.key_file.read_bytes())
    assert v2.v == 2 and v2.host == keywrap.host_id(same.host.key())
    with pytest.raises(keywrap.HostMismatchError):
        other.unlock(inst, PASSWORD, inst.lease())


def test_download_killed_midway_resumes_to_the_same_bytes(
    srv: Srv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = srv.user("bob")
    srv.policy("bob-p")
    ent = srv.entitle("tiny-bob", "bob", "bob-p")

    def killed(*args: Any) -> None:
        raise KeyboardInterrupt  # killed while the encrypted disk is being made

    with monkeypatch.context() as m:
        m.setattr(disk, "create", killed)
        with pytest.raises(KeyboardInterrupt):
            client(tmp_path, api).download(ent, PASSWORD)
    (staged,) = (tmp_path / "flex" / "instances").iterdir()
    assert staged.name.startswith(".") and staged.name.endswith(".new")

    # the connection drops at the fourth piece that is fetched (not zeros): the pieces before
    # it are kept, whatever order the parallel requests complete in
    pieces = Instance(staged).manifest().pieces
    zero = {p.length: blake3.blake3(bytes(p.length)).hexdigest() for p in pieces}
    cut_at = [n for n, p in enumerate(pieces) if p.blake3 != zero[p.length]][3]

    def cut(n: int, data: bytes) -> bytes:
        if n >= cut_at:
            raise BackendError("the connection dropped")
        return data

    first = Flaky(api, cut)
    with pytest.raises(BackendError, match="the connection dropped"):
        client(tmp_path, first).download(ent, PASSWORD)
    (inst_dir,) = (tmp_path / "flex" / "instances").iterdir()
    done = {int(x) for x in (inst_dir / "pieces.journal").read_text().split()}
    assert done == set(range(cut_at))  # zero pieces are journaled without a download
    # a wrong password does not continue it
    with pytest.raises(StoreKeyError):
        client(tmp_path, Flaky(api, lambda n, d: d)).download(ent, "not-it")
    second = Flaky(api, lambda n, d: d)
    c = client(tmp_path, second)
    inst = c.download(ent, PASSWORD)
    assert inst.id == inst_dir.name  # the same instance, continued
    assert not done & set(second.pieces)  # what arrived before is not fetched again
    assert c.status(inst.id)[0]["downloaded"] is True
    got = plaintext(inst.disk, unwrap(c, inst.id), tmp_path / "nbd.sock")
    assert got == srv.guest.disk.read_bytes()
    assert f".{inst.id}.new" == staged.name  # the set-up cut short was continued
    mine = srv.admin.get("/flex/instances", params={}).json()
    assert [i["id"] for i in mine if i["user"] == "bob"] == [inst.id]  # no orphan instance


def test_tampered_piece_is_refused_and_nothing_of_it_is_kept(srv: Srv, tmp_path: Path) -> None:
    api = srv.user("erin")
    srv.policy("erin-p")
    ent = srv.entitle("tiny-erin", "erin", "erin-p")
    bad: list[int] = []

    def flip(n: int, data: bytes) -> bytes:
        if not bad:
            bad.append(n)
            return data[:100] + bytes([data[100] ^ 1]) + data[101:]
        return data

    c = client(tmp_path, Flaky(api, flip))
    with pytest.raises(IntegrityError, match=r"does not match the signed manifest"):
        c.download(ent, PASSWORD)
    (inst_dir,) = (tmp_path / "flex" / "instances").iterdir()
    inst = c.folder.get(inst_dir.name)
    assert bad[0] not in inst.done_pieces()
    piece = inst.manifest().pieces[bad[0]]
    view = plaintext(inst.disk, unwrap(c, inst.id), tmp_path / "nbd.sock")
    assert view[piece.offset : piece.offset + piece.length] == bytes(piece.length)
    # the manifest kept on the laptop is verified at every use
    signed = json.loads((inst_dir / "manifest.json").read_text())
    signed["body"] = signed["body"].replace('"memory_mib":256', '"memory_mib":8192')
    (inst_dir / "manifest.json").write_text(json.dumps(signed))
    with pytest.raises(IntegrityError, match="signature"):
        c.download(ent, PASSWORD)


def test_manifest_tampered_in_transit_is_refused(srv: Srv, tmp_path: Path) -> None:
    api = srv.user("frank")
    srv.policy("frank-p")
    ent = srv.entitle("tiny-frank", "frank", "frank-p")

    class Tamper(Flaky):
        def post(self, path: str, json: Any = None, **kw: Any) -> Any:
            doc = self.api.post(path, json, **kw)
            doc["manifest"]["body"] = doc["manifest"]["body"].replace('"cpus":1', '"cpus":64')
            return doc

    with pytest.raises(IntegrityError, match="signature"):
        client(tmp_path, Tamper(api, lambda n, d: d)).download(ent, PASSWORD)
    assert list((tmp_path / "flex" / "instances").iterdir()) == []


def test_server_key_is_pinned_on_first_use(tmp_path: Path) -> None:
    pins = KeyPins(tmp_path / "flex-keys.json")
    a = FlexKeyPublic(key_id="a" * 32, public_key=base64.b64encode(b"\x01" * 32).decode())
    b = FlexKeyPublic(key_id="b" * 32, public_key=base64.b64encode(b"\x02" * 32).decode())
    assert pins.check("https://srv", a) == a.public_key
    assert pins.check("https://srv", a) == a.public_key
    with pytest.raises(IntegrityError, match="pinned"):
        pins.check("https://srv", b)
    assert pins.check("https://other", b) == b.public_key


def test_lease_offline_lock_unlock_revoke_and_clock_rollback(srv: Srv, tmp_path: Path) -> None:
    api = srv.user("carol")
    srv.policy("carol-p", lease_seconds=3600)
    ent = srv.entitle("tiny-carol", "carol", "carol-p")
    clock = Clock()
    c = client(tmp_path, api, clock)
    instance = c.download(ent, PASSWORD).id
    inst = c.folder.get(instance)
    offline = client(tmp_path, None, clock)
    # offline: fine within the lease, refused after it
    offline.authorize(inst)
    clock.move(minutes=59)
    offline.authorize(inst)
    clock.move(minutes=2)
    with pytest.raises(ForbiddenError, match=r"lease .* ended"):
        offline.authorize(inst)
    # a clock set back before the last trusted time is refused
    clock.move(minutes=-61 - 10)
    with pytest.raises(ForbiddenError, match="set back"):
        offline.authorize(inst)
    clock.move(minutes=10)
    # online, a lock reaches the laptop at check-in, with the admin's message; offline too
    r = srv.admin.post(f"/flex/instances/{instance}/lock", json={"message": "call the help desk"})
    assert r.status_code == 200, r.text
    with pytest.raises(ForbiddenError, match="locked by the administrator: call the help desk"):
        c.authorize(inst)
    with pytest.raises(ForbiddenError, match="locked"):
        offline.authorize(inst)
    assert srv.admin.post(f"/flex/instances/{instance}/unlock", json={}).status_code == 200
    assert c.authorize(inst).state == "active"
    # revoke: the key and the disk are deleted at the next check-in
    assert (
        srv.admin.post(f"/flex/instances/{instance}/revoke", json={"message": "left"}).status_code
        == 200
    )
    with pytest.raises(ForbiddenError, match="revoked by the administrator: left"):
        c.authorize(inst)
    assert not inst.disk.exists() and not inst.key_file.exists()
    assert c.status(instance)[0]["state"] == "revoked"


def test_wrong_passwords_lock_the_instance_out_until_a_time(srv: Srv, tmp_path: Path) -> None:
    api = srv.user("dan")
    srv.policy("dan-p", max_password_tries=2, lockout_seconds=600)
    ent = srv.entitle("tiny-dan", "dan", "dan-p")
    clock = Clock()
    c = client(tmp_path, api, clock)
    inst = c.download(ent, PASSWORD)
    lease = inst.lease()
    with pytest.raises(StoreKeyError, match="1 more before a lockout"):
        c.unlock(inst, "nope", lease)
    with pytest.raises(RateLimitedError, match="locked out until") as e:
        c.unlock(inst, "nope", lease)
    until = (clock.t + dt.timedelta(seconds=600)).strftime("%Y-%m-%d %H:%M:%S")
    assert until in e.value.message
    # even the right password waits for the lockout to end
    clock.move(seconds=599)
    with pytest.raises(RateLimitedError):
        c.unlock(inst, PASSWORD, lease)
    clock.move(seconds=2)
    assert c.unlock(inst, PASSWORD, lease)
    assert c.status(inst.id)[0]["locked_out_until"] is None


def test_qmp_stops_the_vm_when_the_lease_ends_while_it_runs(tmp_path: Path) -> None:
    """QEMU accepts the argv with every option on (SPICE display, clipboard, USB redirection,
    NAT, a shared folder, fw_cfg); the VM idles in the firmware (a blank disk) and, once the
    deadline passes, the client powers it down through QMP and, after the grace, quits it."""
    key = keywrap.new_disk_key()
    disk.create(tmp_path / "disk.qcow2", 1 << 20, key)
    (tmp_path / "share").mkdir()
    clock = Clock()
    for headless in (False, True):
        fds = [disk.secret_pipe(disk.passphrase(key)), disk.secret_pipe(b'{"token":"t"}')]
        plan = qemu.LaunchPlan(
            name="lamina-flex-test",
            disk=tmp_path / "disk.qcow2",
            key_fd=fds[0],
            memory_mib=64,
            cpus=1,
            firmware="bios",
            restrictions=FlexRestrictions(
                clipboard=True, usb=["hid", "storage"], shared_folder="rw", network="nat"
            ),
            headless=headless,
            qmp_socket=tmp_path / "qmp.sock",
            run_dir=tmp_path,
            shared_folder=tmp_path / "share",
            enroll_fd=fds[1],
            accel="tcg",
        )
        end = clock.t + dt.timedelta(hours=1)
        with open(os.devnull, "wb") as sink:
            result = qemu.run(
                qemu.build_argv(plan),
                fds,
                plan.qmp_socket,
                end,
                clock,
                grace=0.5,
                stdout=sink,
                on_started=lambda _qmp: clock.move(hours=2),
            )
        assert result.stopped_for_deadline


def spice_link(path: str) -> tuple[bytes, int]:
    """A SPICE client's first step on the main channel (``SpiceLinkMess``): the server's
    magic and error code (0: it would go on to ask for a ticket or accept)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        body = struct.pack("<IBBIII", 0, 1, 0, 0, 0, 18)  # connection 0, main channel
        s.sendall(b"REDQ" + struct.pack("<III", 2, 2, len(body)) + body)
        head = b""
        while len(head) < 20:
            chunk = s.recv(20 - len(head))
            assert chunk, "the SPICE server closed the connection"
            head += chunk
    return head[:4], struct.unpack("<I", head[16:20])[0]


def test_spice_display_and_live_policy_changes_on_a_running_vm(tmp_path: Path) -> None:
    """With a display, QEMU's SPICE server listens on the unix socket ``query-spice`` names
    (the URI the client prints); a tighter policy reaches the running VM: the NIC's link is
    cut and the USB redirections unplugged, and what QEMU cannot change live is named."""
    key = keywrap.new_disk_key()
    disk.create(tmp_path / "disk.qcow2", 1 << 20, key)
    clock = Clock()
    before = FlexRestrictions(clipboard=True, usb=["hid", "storage"], network="nat")
    fds = [disk.secret_pipe(disk.passphrase(key))]
    plan = qemu.LaunchPlan(
        name="lamina-flex-live",
        disk=tmp_path / "disk.qcow2",
        key_fd=fds[0],
        memory_mib=64,
        cpus=1,
        firmware="bios",
        restrictions=before,
        headless=False,
        qmp_socket=tmp_path / "qmp.sock",
        run_dir=tmp_path,
        accel="tcg",
    )
    seen: dict[str, Any] = {}

    def started(qmp: qemu.Qmp) -> None:
        uri = qemu.spice_uri(qmp)
        seen["uri"] = uri
        seen["link"] = spice_link(uri.removeprefix("spice+unix://"))
        peripherals = {
            d["name"] for d in qmp.command("qom-list", path="/machine/peripheral")["return"]
        }
        seen["before"] = peripherals
        seen["tighter"] = qemu.apply_live(
            qmp, before, before.model_copy(update={"network": "none", "usb": "none"})
        )
        seen["after"] = {
            d["name"] for d in qmp.command("qom-list", path="/machine/peripheral")["return"]
        }
        seen["refused"] = qemu.apply_live(
            qmp, before, before.model_copy(update={"clipboard": False, "usb": ["hid"]})
        )
        clock.move(hours=2)

    with open(os.devnull, "wb") as sink:
        result = qemu.run(
            qemu.build_argv(plan),
            fds,
            plan.qmp_socket,
            clock.t + dt.timedelta(hours=1),
            clock,
            grace=0.5,
            stdout=sink,
            on_started=started,
        )
    assert result.stopped_for_deadline
    assert seen["uri"] == f"spice+unix://{tmp_path / 'spice.sock'}"
    assert seen["link"] == (b"REDQ", 0)
    redir = {f"{qemu.USB_REDIR_ID}{n}" for n in range(qemu.USB_REDIR_PORTS)}
    assert redir | {qemu.NIC_ID} <= seen["before"]
    assert seen["tighter"] == (["the network is cut", "USB redirection is removed"], "")
    assert not redir & seen["after"] and qemu.NIC_ID in seen["after"]
    assert seen["refused"] == ([], "fewer USB device classes, no clipboard")


# --- real boots ------------------------------------------------------------------------------------
def cli(
    tmp: Path, api: Api, *args: str, input: str = PASSWORD + "\n", process: bool = False
) -> subprocess.CompletedProcess[str]:
    """``lamina`` as the laptop's user: the session of ``api`` saved as a login. It runs in
    this process (tests/cli/invoke.py), or in its own with ``process`` (a launch: QEMU
    writes the guest's console to the command's own standard output)."""
    cfg = tmp / "config"
    (cfg / "lamina").mkdir(parents=True, exist_ok=True)
    token = api.http.headers["Authorization"].split()[1]
    login = cfg / "lamina" / "login.json"
    if not login.exists():
        login.write_text(json.dumps({"url": api.url, "token": token}))
    env = {**os.environ, "XDG_CONFIG_HOME": str(cfg)}
    env.pop("LAMINA_URL", None)
    env.pop("LAMINA_TOKEN", None)
    if not (process or subprocesses_wanted(env)):
        return invoke(args, env, input)
    return subprocess.run(
        [*LAMINA, *args], capture_output=True, text=True, env=env, input=input, timeout=600
    )


def boot(tmp: Path, api: Api, instance: str, *extra: str) -> Any:
    p = cli(
        tmp,
        api,
        "flex-client",
        "launch",
        instance,
        "--dir",
        str(tmp / "flex"),
        "--headless",
        "--password-stdin",
        "--accel",
        ACCEL,
        *extra,
        process=True,
    )
    assert p.returncode == 0, p.stderr
    report = parse_report(p.stdout)
    assert report.complete, p.stdout[-2000:]
    return report, p


@pytest.mark.e2e
@pytest.mark.slow
def test_boot_obeys_the_policy_and_a_policy_change_at_the_next_launch(
    srv: Srv, alice: tuple[FlexClient, str, Path]
) -> None:
    c, instance, tmp = alice
    api = c.api
    assert isinstance(api, Api)
    report, p = boot(tmp, api, instance)
    assert "Company data: be careful" in p.stderr
    assert report.values("net") == []  # network none: no NIC
    assert report.values("usb-bus") == []  # usb none: no USB controller
    assert report.values("fwcfg") == []  # not managed: no enrollment
    assert report.values("mount-tag") == []
    assert report.values("vport") == []  # headless: no SPICE agent channel
    # the admin opens the policy up; the next launch checks in and obeys it
    r = srv.admin.put(
        "/flex/policies/strict",
        json={
            "restrictions": {"network": "nat", "usb": ["hid"], "shared_folder": "ro", "message": ""}
        },
    )
    assert r.status_code == 200, r.text
    share = tmp / "share"
    share.mkdir()
    (share / "hello.txt").write_text("hi")
    report, _ = boot(tmp, api, instance, "--share", str(share))
    assert report.values("net") == ["eth0"]
    assert report.values("usb-bus")  # a controller, for the filtered redirections
    assert report.values("mount-tag") == ["lamina-share"]
    assert report.values("share-write") == ["lamina-share refused"]  # read-only share
    assert not (share / ".lamina-guest-write").exists()
    st = json.loads(
        cli(
            tmp, api, "flex-client", "status", instance, "--dir", str(tmp / "flex"), "--json"
        ).stdout
    )
    assert st["policy"]["network"] == "nat" and st["policy"]["usb"] == ["hid"]


@pytest.mark.e2e
@pytest.mark.slow
def test_managed_guest_gets_its_enrollment_through_fw_cfg_and_enrolls(
    srv: Srv, tmp_path: Path
) -> None:
    api = srv.user("gina")
    if srv.admin.get("/policies/flexstd").status_code == 404:
        assert srv.admin.post("/policies", json={"name": "flexstd"}).status_code == 201
    srv.policy("gina-p", network="nat")
    ent = srv.entitle("tiny-gina", "gina", "gina-p", manage=True, cvd_policy="flexstd")
    p = cli(
        tmp_path,
        api,
        "flex-client",
        "download",
        "tiny-gina",  # by name
        "--dir",
        str(tmp_path / "flex"),
        "--password-stdin",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    instance = json.loads(p.stdout)["instance"]
    folder = ["--dir", str(tmp_path / "flex")]
    listed = json.loads(cli(tmp_path, api, "flex-client", "list", *folder, "--json").stdout)
    assert [(e["id"], e["name"]) for e in listed] == [(ent, "tiny-gina")]
    assert listed[0]["policy"]["name"] == "gina-p"
    checked = json.loads(cli(tmp_path, api, "flex-client", "checkin", *folder, "--json").stdout)
    assert [(s["id"], s["state"], s["managed"]) for s in checked] == [(instance, "active", True)]
    report, _ = boot(tmp_path, api, instance)
    assert report.values("fwcfg") == ["opt/org.lamina/enroll"]
    (enc,) = report.values("enroll")
    doc = json.loads(base64.b64decode(enc))
    assert doc["server_url"] == srv.live.url and doc["token"]
    # nothing of it stays on the laptop
    for f in (tmp_path / "flex").rglob("*"):
        assert (
            not f.is_file() or doc["token"].encode() not in f.read_bytes() or f.name == "lease.json"
        )
    # inside the guest, the agent enrolls from what fw_cfg showed it
    raw = tmp_path / "fw_cfg_raw"
    raw.write_bytes(base64.b64decode(enc))
    root = tmp_path / "root"
    root.mkdir()
    e = cli(
        tmp_path,
        api,
        "agent",
        "enroll",
        "--from-fw-cfg",
        "--fw-cfg-path",
        str(raw),
        "--root",
        str(root),
        "--state",
        str(tmp_path / "agent"),
        "--json",
        input="",
    )
    assert e.returncode == 0, e.stderr
    device = json.loads(e.stdout)["device_id"]
    shown = srv.admin.get(f"/flex/instances/{instance}").json()
    assert device in json.dumps(shown)
    r = cli(tmp_path, api, "flex-client", "remove", instance, *folder, "--yes")
    assert r.returncode == 0, r.stderr
    assert json.loads(cli(tmp_path, api, "flex-client", "status", *folder, "--json").stdout) == []
    gone = cli(tmp_path, api, "flex-client", "status", instance, *folder, "--json")
    assert gone.returncode == 3 and gone.stderr.startswith("error: no instance")


def hold_qemu(tmp: Path) -> str:
    """QEMU with the fw_cfg entry that keeps the test guest up after its report."""
    wrapper = tmp / "qemu-hold"
    wrapper.write_text(
        '#!/bin/sh\nexec qemu-system-x86_64 "$@" -fw_cfg name=opt/org.lamina/test-hold,string=1\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


class AdminMidRun(Flaky):
    """The server; at each check-in of the running VM (once the guest says it is up and
    holding, with ``wait_for_guest``), the next of the administrator's ``actions``
    happens on the server first."""

    def __init__(
        self, api: Api, serial: Path, actions: list[Callable[[], None]], wait_for_guest: bool
    ) -> None:
        super().__init__(api, lambda n, d: d)
        self.serial = serial
        self.actions = actions
        self.wait_for_guest = wait_for_guest
        self.checkins = 0

    def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        if path.endswith("/checkin"):
            self.checkins += 1
            up = not self.wait_for_guest or b"LAMINA-GUEST holding" in self.serial.read_bytes()
            if self.checkins > 1 and self.actions and up:  # the first is the launch's own
                self.actions.pop(0)()
        return self.api.post(path, json, **kw)


@pytest.mark.e2e
@pytest.mark.slow
def test_lock_policy_and_revoke_reach_a_running_vm(srv: Srv, tmp_path: Path) -> None:
    api = srv.user("hank")
    srv.policy("hank-p", network="nat", usb=["hid"])
    ent = srv.entitle("tiny-hank", "hank", "hank-p")
    notes: list[str] = []
    c = FlexClient(
        tmp_path / "flex", api, tmp_path / "keys.json", now=Clock(), kdf=FAST, notify=notes.append
    )
    instance = c.download(ent, PASSWORD).id
    inst = c.folder.get(instance)
    serial = tmp_path / "serial.out"

    def run(actions: list[Callable[[], None]], wait_for_guest: bool) -> qemu.RunResult:
        c.api = AdminMidRun(api, serial, actions, wait_for_guest)
        opts = LaunchOptions(
            headless=True,
            accel=ACCEL,
            grace=1.0,
            qemu_binary=hold_qemu(tmp_path),
            checkin_interval=1.0,
        )
        with open(serial, "wb") as out:
            opts.stdout = out
            result = c.launch(instance, PASSWORD, opts)
        assert not actions  # every action happened while the VM ran
        return result

    def admin(method: str, path: str, body: dict[str, Any]) -> Callable[[], None]:
        def act() -> None:
            r = srv.admin.request(method, path, json=body)
            assert r.status_code == 200, r.text

        return act

    # a tighter policy is applied live, then a lock stops the VM with the admin's message
    result = run(
        [
            admin(
                "PUT", "/flex/policies/hank-p", {"restrictions": {"network": "none", "usb": "none"}}
            ),
            admin("POST", f"/flex/instances/{instance}/lock", {"message": "audit in progress"}),
        ],
        wait_for_guest=True,
    )
    assert b"LAMINA-GUEST holding" in serial.read_bytes()  # the guest was up and running
    assert result.stopped is not None and result.stopped.reason == "locked"
    assert "policy change applied to the running VM: the network is cut" in notes
    assert "policy change applied to the running VM: USB redirection is removed" in notes
    assert notes[-1] == (
        f"the VM was stopped: instance {instance} was locked by the administrator: audit in progress"
    )
    assert inst.disk.exists() and inst.key_file.exists()
    # unlocked, it runs again; a revoke stops it at once and deletes its key and disk (at
    # the first check-in of the run: the guest's boot is not waited for again)
    assert srv.admin.post(f"/flex/instances/{instance}/unlock", json={}).status_code == 200
    revoke = admin("POST", f"/flex/instances/{instance}/revoke", {"message": "left"})
    result = run([revoke], wait_for_guest=False)
    assert result.stopped is not None and result.stopped.reason == "revoked"
    assert "revoked by the administrator: left" in notes[-1]
    assert not inst.disk.exists() and not inst.key_file.exists()
    assert c.status(instance)[0]["state"] == "revoked"
