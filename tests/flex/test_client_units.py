"""The flex client's pure parts: QEMU's argv from a policy, the key wrap, the offline lease check."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest

from lamina.errors import BackendError, ForbiddenError, IntegrityError, StoreKeyError
from lamina.flex import disk, keywrap
from lamina.flex.lease import (
    CLOCK_SKEW,
    accept_renewal,
    advance,
    check_state,
    check_time,
    checkin_interval,
)
from lamina.flex.qemu import LaunchPlan, _usb_narrowed, build_argv, usb_filter
from lamina.protocol.flex import FlexPolicyDoc, FlexRestrictions, Lease

FAST = keywrap.KdfParams(time_cost=1, memory_kib=64, parallelism=1)
T0 = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)


def plan(headless: bool = True, **restrictions: Any) -> LaunchPlan:
    return LaunchPlan(
        name="lamina-flex-i1",
        disk=Path("/data/flex/instances/i1/disk.qcow2"),
        key_fd=7,
        memory_mib=512,
        cpus=2,
        firmware="bios",
        restrictions=FlexRestrictions(**restrictions),
        headless=headless,
        qmp_socket=Path("/run/x/qmp.sock"),
        run_dir=Path("/run/x"),
        shared_folder=Path("/home/u/share"),
        accel="tcg",
    )


def opts(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_network_none_has_no_nic_and_nat_has_a_user_nic() -> None:
    assert opts(build_argv(plan(network="none")), "-nic") == ["none"]
    assert opts(build_argv(plan(network="none")), "-netdev") == []
    nat = build_argv(plan(network="nat"))
    assert opts(nat, "-nic") == []
    assert opts(nat, "-netdev") == ["user,id=lamina-net"]
    # the NIC is named, so a policy change can take its link down while the VM runs
    assert "virtio-net-pci,netdev=lamina-net,id=lamina-nic" in opts(nat, "-device")


def test_usb_none_has_no_controller_and_no_redirection() -> None:
    argv = build_argv(plan(usb="none"))
    assert "-usb" not in argv
    assert not any("xhci" in a or "usb" in a for a in opts(argv, "-device"))


def test_usb_classes_become_a_usb_redir_filter_per_port() -> None:
    argv = build_argv(plan(usb=["storage", "hid"]))
    devices = opts(argv, "-device")
    assert "qemu-xhci,id=lamina-usb" in devices
    redirs = [d for d in devices if d.startswith("usb-redir,")]
    assert len(redirs) == 2
    for d in redirs:
        assert d.endswith("filter=0x03:-1:-1:-1:1|0x08:-1:-1:-1:1|-1:-1:-1:-1:0")
    # headless: the redirections are unix sockets in the run folder, not SPICE channels
    chardevs = opts(argv, "-chardev")
    assert all(c.startswith("socket,") and "/run/x/usbredir" in c for c in chardevs)


def test_usb_filter_all_and_comm() -> None:
    assert usb_filter("all") == "-1:-1:-1:-1:1|-1:-1:-1:-1:0"
    assert usb_filter(["comm"]) == "0x02:-1:-1:-1:1|0x0a:-1:-1:-1:1|-1:-1:-1:-1:0"
    assert usb_filter("none") == "-1:-1:-1:-1:0"


def test_headless_has_no_display_and_serial_on_stdio() -> None:
    argv = build_argv(plan(headless=True, clipboard=True, drag_drop=True))
    assert opts(argv, "-display") == ["none"]
    assert opts(argv, "-serial") == ["stdio"]
    assert "-spice" not in argv
    assert not any("vdagent" in a for a in argv)


def test_spice_clipboard_and_file_transfer_follow_the_policy() -> None:
    off = build_argv(plan(headless=False, clipboard=False, drag_drop=False))
    (spice,) = opts(off, "-spice")
    assert "disable-copy-paste=on" in spice and "disable-agent-file-xfer=on" in spice
    assert not any("vdagent" in a for a in off)
    on = build_argv(plan(headless=False, clipboard=True, drag_drop=False))
    (spice,) = opts(on, "-spice")
    assert "disable-copy-paste=off" in spice and "disable-agent-file-xfer=on" in spice
    assert "spicevmc,id=lamina-vdagent,name=vdagent" in opts(on, "-chardev")


def test_usb_redirection_goes_through_spice_with_a_display() -> None:
    argv = build_argv(plan(headless=False, usb=["hid"]))
    assert "spicevmc,id=lamina-usbredir0,name=usbredir" in opts(argv, "-chardev")


def test_shared_folder_read_only_read_write_or_absent() -> None:
    (ro,) = opts(build_argv(plan(shared_folder="ro")), "-virtfs")
    assert "readonly=on" in ro and "path=/home/u/share" in ro and "mount_tag=lamina-share" in ro
    (rw,) = opts(build_argv(plan(shared_folder="rw")), "-virtfs")
    assert "readonly" not in rw
    assert opts(build_argv(plan(shared_folder="off")), "-virtfs") == []


def test_secrets_are_never_on_the_command_line() -> None:
    p = plan()
    argv = build_argv(LaunchPlan(**{**p.__dict__, "enroll_fd": 9}))
    assert "secret,id=lamina-disk-key,file=/dev/fd/7" in opts(argv, "-object")
    assert "name=opt/org.lamina/enroll,file=/dev/fd/9" in opts(argv, "-fw_cfg")
    assert opts(build_argv(p), "-fw_cfg") == []  # unmanaged: no fw_cfg entry


def test_commas_in_paths_are_escaped() -> None:
    p = plan()
    argv = build_argv(LaunchPlan(**{**p.__dict__, "disk": Path("/a,b/disk.qcow2")}))
    assert any("filename=/a,,b/disk.qcow2" in a for a in opts(argv, "-blockdev"))


# --- key wrap -------------------------------------------------------------------------------------
def test_key_wrap_round_trip_and_wrong_password(tmp_path: Path) -> None:
    host = keywrap.HostKey(tmp_path / "flex-host.key", machine_id="m1").key()
    key = keywrap.new_disk_key()
    w = keywrap.wrap(key, "correct horse", "i1", host, FAST)
    assert w.v == 2 and w.host == keywrap.host_id(host)
    assert keywrap.unwrap(w, "correct horse", "i1", host) == key
    with pytest.raises(StoreKeyError):
        keywrap.unwrap(w, "wrong horse", "i1", host)
    # a key file moved beside another instance does not open it
    with pytest.raises(StoreKeyError):
        keywrap.unwrap(w, "correct horse", "i2", host)
    assert key.hex() not in w.model_dump_json()
    assert oct((tmp_path / "flex-host.key").stat().st_mode & 0o777) == oct(0o600)


def test_key_wrap_is_bound_to_the_machine_id_and_the_client_secret(tmp_path: Path) -> None:
    here = keywrap.HostKey(tmp_path / "a" / "flex-host.key", machine_id="m1")
    w = keywrap.wrap(keywrap.new_disk_key(), "pw", "i1", here.key(), FAST)
    same = keywrap.HostKey(tmp_path / "a" / "flex-host.key", machine_id="m1")
    assert keywrap.unwrap(w, "pw", "i1", same.key())
    # another machine id with the same client secret (the config copied too), or the same
    # machine id with another client secret: refused as a copy, before any password try
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "flex-host.key").write_bytes((tmp_path / "a" / "flex-host.key").read_bytes())
    for other in (
        keywrap.HostKey(tmp_path / "b" / "flex-host.key", machine_id="m2"),
        keywrap.HostKey(tmp_path / "c" / "flex-host.key", machine_id="m1"),
    ):
        with pytest.raises(keywrap.HostMismatchError, match="copied from another computer"):
            keywrap.unwrap(w, "pw", "i1", other.key())
    # even with the host id forged in the file, the kek differs: the tag fails
    forged = w.model_copy(update={"host": keywrap.host_id(other.key())})
    with pytest.raises(StoreKeyError):
        keywrap.unwrap(forged, "pw", "i1", other.key())


def test_key_wrap_damaged_file_is_an_integrity_error(tmp_path: Path) -> None:
    host = keywrap.HostKey(tmp_path / "flex-host.key", machine_id="m1").key()
    w = keywrap.wrap(keywrap.new_disk_key(), "pw", "i1", host, FAST)
    with pytest.raises(IntegrityError):
        keywrap.unwrap(w.model_copy(update={"wrapped": "AAAA"}), "pw", "i1", host)
    (tmp_path / "short.key").write_bytes(b"x" * 5)
    with pytest.raises(IntegrityError, match="damaged"):
        keywrap.HostKey(tmp_path / "short.key", machine_id="m1").key()


# --- lease ----------------------------------------------------------------------------------------
def lease(**kw: Any) -> Lease:
    doc: dict[str, Any] = {
        "instance_id": "i1",
        "user": "bob",
        "entitlement_id": "e1",
        "image_id": "img",
        "version": 1,
        "policy": FlexPolicyDoc(name="p", restrictions=FlexRestrictions(), lease_seconds=3600),
        "state": "active",
        "issued_at": T0,
        "lease_until": T0 + dt.timedelta(hours=1),
    }
    doc.update(kw)
    return Lease(**doc)


def test_offline_lease_runs_until_lease_until() -> None:
    check_time(lease(), T0 + dt.timedelta(minutes=59), T0)
    with pytest.raises(ForbiddenError, match="lease of instance i1 ended"):
        check_time(lease(), T0 + dt.timedelta(hours=1), T0)


def test_expiry_refuses_even_within_the_lease() -> None:
    short = lease(expires_at=T0 + dt.timedelta(minutes=10))
    check_time(short, T0 + dt.timedelta(minutes=9), T0)
    with pytest.raises(ForbiddenError, match="expired"):
        check_time(short, T0 + dt.timedelta(minutes=10), T0)


def test_clock_set_back_before_the_last_trusted_time_is_refused() -> None:
    trusted = advance(T0, T0 + dt.timedelta(minutes=30))
    assert trusted == T0 + dt.timedelta(minutes=30)
    with pytest.raises(ForbiddenError, match="set back"):
        check_time(lease(), trusted - CLOCK_SKEW - dt.timedelta(seconds=1), trusted)
    check_time(lease(), trusted - CLOCK_SKEW, trusted)  # within the skew allowed


def test_locked_lease_carries_the_admins_message() -> None:
    with pytest.raises(ForbiddenError, match="locked by the administrator: see IT"):
        check_state(lease(state="locked", message="see IT"))


def test_renewal_must_name_the_instance_and_not_be_older() -> None:
    old = lease()
    accept_renewal(old, lease(issued_at=T0 + dt.timedelta(seconds=1)), "i1")
    with pytest.raises(IntegrityError, match="replay"):
        accept_renewal(old, lease(issued_at=T0 - dt.timedelta(seconds=1)), "i1")
    with pytest.raises(IntegrityError, match="names instance"):
        accept_renewal(old, lease(instance_id="i2"), "i1")


# --- a managed guest's enrollment through fw_cfg ----------------------------------------------------
def test_fw_cfg_enrollment_is_read_and_checked(tmp_path: Path) -> None:
    from lamina.agent.fwcfg import MAX_BYTES, read_enrollment
    from lamina.errors import NotFoundError

    raw = tmp_path / "raw"
    with pytest.raises(NotFoundError, match="not a managed flex guest"):
        read_enrollment(raw)
    raw.write_text('{"server_url": "https://lamina:8470", "token": "tok"}')
    info = read_enrollment(raw)
    assert (info.server_url, info.token) == ("https://lamina:8470", "tok")
    raw.write_text('{"server_url": "https://lamina:8470"}')
    with pytest.raises(IntegrityError, match="not valid"):
        read_enrollment(raw)
    raw.write_bytes(b"{" * (MAX_BYTES + 1))
    with pytest.raises(IntegrityError, match="larger than"):
        read_enrollment(raw)


def test_a_running_vm_checks_in_every_quarter_lease_within_bounds() -> None:
    def every(seconds: int) -> float:
        policy = FlexPolicyDoc(name="p", restrictions=FlexRestrictions(), lease_seconds=seconds)
        return checkin_interval(lease(policy=policy))

    assert every(60) == 30.0
    assert every(600) == 150.0
    assert every(7 * 86400) == 300.0


def test_usb_narrowing_is_what_a_fixed_filter_cannot_follow() -> None:
    assert _usb_narrowed("all", ["hid"])
    assert _usb_narrowed(["hid", "storage"], ["hid"])
    assert not _usb_narrowed(["hid"], ["hid", "storage"])  # a loosening waits
    assert not _usb_narrowed(["hid"], "all")
    assert not _usb_narrowed("none", ["hid"])
    assert not _usb_narrowed(["hid"], "none")  # unplugged live instead


def _fake_qemu_img(bin_dir: Path, failures: int, message: str) -> Path:
    """A ``qemu-img`` on PATH that writes a partial file and fails ``failures`` times
    with ``message``, then creates the file; each call is counted in ``calls``."""
    calls = bin_dir / "calls"
    script = bin_dir / "qemu-img"
    script.write_text(
        "#!/bin/sh\n"
        f"n=$(cat {calls} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {calls}\n"
        'for a; do target="$prev"; prev="$a"; done\n'
        'echo partial > "$target"\n'
        f'if [ "$n" -le {failures} ]; then echo "qemu-img: $target: {message}" >&2; exit 1; fi\n'
        'echo disk > "$target"\n'
    )
    script.chmod(0o755)
    return calls


def test_disk_create_retries_qemu_imgs_failed_pbkdf_measurement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_qemu_img(tmp_path, failures=2, message=disk.PBKDF_MEASURE_FAILED)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(disk, "CREATE_PAUSE_SECONDS", 0)
    disk.create(tmp_path / "disk.qcow2", 1 << 20, b"k" * 32)
    assert calls.read_text().strip() == "3"
    assert (tmp_path / "disk.qcow2").read_text() == "disk\n"


def test_disk_create_gives_up_after_its_attempts_and_on_any_other_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(disk, "CREATE_PAUSE_SECONDS", 0)
    calls = _fake_qemu_img(tmp_path, failures=99, message=disk.PBKDF_MEASURE_FAILED)
    with pytest.raises(BackendError, match=disk.PBKDF_MEASURE_FAILED):
        disk.create(tmp_path / "disk.qcow2", 1 << 20, b"k" * 32)
    assert calls.read_text().strip() == str(disk.CREATE_ATTEMPTS)
    assert not (tmp_path / "disk.qcow2").exists()  # no partial disk left behind

    calls.unlink()
    _fake_qemu_img(tmp_path, failures=99, message="No space left on device")
    with pytest.raises(BackendError, match="No space left"):
        disk.create(tmp_path / "disk.qcow2", 1 << 20, b"k" * 32)
    assert calls.read_text().strip() == "1"
