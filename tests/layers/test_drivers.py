"""Driver profiles: which packs a device's facts get (a pure function), merged-/usr paths."""

from __future__ import annotations

from typing import Any

import pytest

from lamina.errors import UsageError
from lamina.layers.drivers import (
    Match,
    PackRef,
    Profile,
    os_family_of,
    packs_for,
    resolve_usr,
    same_hardware,
    usr_merged,
)

T450 = {
    "sys_vendor": "LENOVO",
    "product_name": "20BWS03B00",
    "product_version": "ThinkPad T450s",
    "modaliases": [
        "pci:v00008086d00009CB1sv000017AAsd00002227bc0Csc03i30",
        "pci:v000010ECd00005227sv000017AAsd00002226bc0Dsc00i00",
    ],
    "storage_controllers": [{"slot": "0000:00:1f.2", "modalias": "pci:x", "driver": "ahci"}],
}
DELL: dict[str, Any] = {
    "sys_vendor": "Dell Inc.",
    "product_name": "OptiPlex 7090",
    "modaliases": [],
}


def profile(
    name: str, packs: list[str], matches: list[str], os_family: str | None = None
) -> Profile:
    return Profile(
        name,
        tuple(PackRef.parse(p) for p in packs),
        tuple(Match.parse(m) for m in matches),
        os_family,
    )


def test_all_matches_must_hold() -> None:
    p = profile("t450", ["thinkpad-fw:2"], ["sys_vendor=lenovo", "product_version=*T450*"])
    assert packs_for(T450, "debian", [p]) == [PackRef("thinkpad-fw", 2)]
    q = profile("t460", ["thinkpad-fw"], ["sys_vendor=LENOVO", "product_version=*T460*"])
    assert packs_for(T450, "debian", [q]) == []


def test_modalias_matches_if_any_device_does() -> None:
    realtek = profile("rtl", ["realtek"], ["modalias=pci:v000010ECd*"])
    assert packs_for(T450, set(), [realtek]) == [PackRef("realtek", None)]
    assert packs_for(DELL, set(), [realtek]) == []
    assert packs_for({}, set(), [realtek]) == []  # no facts at all: nothing matches


def test_storage_driver_and_absent_facts() -> None:
    p = profile("ahci", ["sata"], ["storage_driver=ahci"])
    assert packs_for(T450, set(), [p]) == [PackRef("sata")]
    assert packs_for(DELL, set(), [profile("x", ["y"], ["board_name=*"])]) == []


def test_os_family_is_checked() -> None:
    p = profile("deb", ["fw"], ["sys_vendor=LENOVO"], os_family="debian")
    ubuntu = os_family_of({"ID": "ubuntu", "ID_LIKE": "debian"})
    assert packs_for(T450, ubuntu, [p]) == [PackRef("fw")]
    assert packs_for(T450, os_family_of({"ID": "fedora"}), [p]) == []
    assert packs_for(T450, "Debian", [p]) == [PackRef("fw")]


def test_several_profiles_in_name_order_each_pack_once() -> None:
    a = profile("a-lenovo", ["common:1", "lenovo"], ["sys_vendor=LENOVO"])
    b = profile("b-all-intel", ["common:3", "intel"], ["modalias=pci:v00008086*"])
    assert packs_for(T450, set(), [b, a]) == [
        PackRef("common", 1),
        PackRef("lenovo"),
        PackRef("intel"),
    ]


@pytest.mark.parametrize(
    ("spec", "why"),
    [("nofield", "FIELD=GLOB"), ("colour=red", "cannot match"), ("sys_vendor=", "FIELD=GLOB")],
)
def test_bad_matches(spec: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        Match.parse(spec)


def test_bad_profiles_and_pack_specs() -> None:
    with pytest.raises(UsageError, match="at least one --match"):
        profile("all", ["fw"], [])
    with pytest.raises(UsageError, match="positive number"):
        PackRef.parse("fw:x")
    with pytest.raises(UsageError, match="not valid"):
        PackRef.parse("../fw")


def test_same_hardware() -> None:
    assert same_hardware(T450, dict(T450, bios_version="other"))
    assert not same_hardware(T450, DELL)


def test_merged_usr_resolution() -> None:
    merged = usr_merged({"lib": "usr/lib", "bin": "/usr/bin", "sbin": "elsewhere"})
    assert merged == {"lib", "bin"}
    assert resolve_usr("/lib/firmware/rtl_nic/rtl8168.fw", merged) == (
        "/usr/lib/firmware/rtl_nic/rtl8168.fw"
    )
    assert resolve_usr("lib/modules/6.1/extra/x.ko", merged) == "usr/lib/modules/6.1/extra/x.ko"
    assert resolve_usr("/sbin/tool", merged) == "/sbin/tool"  # /sbin is a real folder there
    assert resolve_usr("/etc/modprobe.d/x.conf", merged) == "/etc/modprobe.d/x.conf"
    assert resolve_usr("/lib/firmware/x", frozenset()) == "/lib/firmware/x"


def test_hardware_warning() -> None:
    from lamina.layers.drivers import hardware_warning

    assert hardware_warning(T450, DELL, []) is not None
    assert "lenovo" in (hardware_warning(T450, DELL, []) or "")
    assert hardware_warning(T450, DELL, [PackRef("fw")]) is None  # a profile matched
    assert hardware_warning(T450, T450, []) is None  # same model
    assert hardware_warning(T450, None, []) is None  # nothing to compare with
