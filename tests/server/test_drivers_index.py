"""A profile's test answered from ``device_match_facts`` names exactly the devices
``Profile.applies`` picks from their facts; the rows follow the facts the agent reports."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, insert, select

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import collections, cvds, device_match_facts, devices, policies
from lamina.layers.drivers import Match, PackRef, Profile, os_family_of
from lamina.server.security import Principal
from lamina.server.services import collections as coll_service
from lamina.server.services import drivers_index

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
READER = Principal("user", "u", "reader", "readonly", frozenset({"read"}))
REALTEK = "pci:v000010ECd00008168sv00001028sd0000087Cbc02sc00i00"
DEB = {"ID": "debian", "VERSION_ID": "12"}
UBUNTU = {"ID": "ubuntu", "ID_LIKE": "debian"}
FACTS: dict[str, dict[str, Any]] = {
    "t14": {"sys_vendor": "LENOVO", "product_name": "20XW T14", "os_release": DEB},
    "t14-rtl": {
        "sys_vendor": "Lenovo",
        "product_name": "20XWCTO1WW",
        "modaliases": ["usb:v1D6Bp0002", REALTEK],
        "os_release": UBUNTU,
    },
    "dell": {"sys_vendor": "Dell Inc.", "product_name": "Latitude 7440", "os_release": DEB},
    "odd": {"sys_vendor": "50%_off\\corp", "product_name": "ÉLITE [x]", "os_release": {}},
    "bare": {},
    "typed": {
        "sys_vendor": 5,
        "product_name": ["20XW"],
        "storage_controllers": [{"driver": "nvme"}],
    },
}
PROFILES = [
    ["sys_vendor=lenovo"],
    ["sys_vendor=LENOVO", "product_name=20XW*"],
    ["modalias=pci:v000010ECd*"],
    ["product_name=*[0-9]XW*"],
    ["sys_vendor=50%_off\\corp"],
    ["sys_vendor=5?%*"],
    ["product_name=élite*"],
    ["product_name=*[[]x]"],
    ["storage_driver=nv?e"],
    ["sys_vendor=*", "product_name=?*"],
    ["hostname=*"],
]


def add(engine: Engine, name: str, facts: dict[str, Any], status: str = "active") -> None:
    """A device as a database from before revision 0010 holds it: no rows of its own."""
    with write_tx(engine) as c:
        c.execute(
            insert(devices).values(
                id=name, hostname=name, status=status, facts=facts,
                credential_hash=name.ljust(64, "0"), enrolled=NOW, agent_state={},
            )
        )  # fmt: skip


def expected(profile: Profile) -> list[str]:
    return sorted(
        name for name, f in FACTS.items() if profile.applies(f, os_family_of(f.get("os_release")))
    )


def test_the_index_agrees_with_profile_applies(engine: Engine) -> None:
    for name, facts in FACTS.items():
        add(engine, name, facts)
    add(engine, "gone", FACTS["t14"], status="archived")
    assert drivers_index.fill(engine) == len(FACTS) + 1
    assert drivers_index.fill(engine) == 0  # once
    for matches in PROFILES:
        for family in (None, "debian", "ubuntu", "rhel"):
            p = Profile("p", (PackRef("x"),), tuple(Match.parse(m) for m in matches), family)
            with read_tx(engine) as c:
                got = drivers_index.matching(c, p, ("pending", "active"))
            assert [d["hostname"] for d in got] == expected(p), (matches, family)


def test_new_facts_replace_a_devices_rows(engine: Engine) -> None:
    add(engine, "pc", FACTS["t14"])
    drivers_index.fill(engine)
    lenovo = Profile("p", (PackRef("x"),), (Match.parse("sys_vendor=lenovo"),))
    with write_tx(engine) as c:
        assert [d["id"] for d in drivers_index.matching(c, lenovo, ("active",))] == ["pc"]
        drivers_index.store(c, "pc", FACTS["dell"])
        assert drivers_index.matching(c, lenovo, ("active",)) == []
        rows = c.execute(
            select(device_match_facts.c.field, device_match_facts.c.value).where(
                device_match_facts.c.device_id == "pc"
            )
        ).all()
    assert ("sys_vendor", "dell inc.") in rows and ("", "") in rows
    assert not any(v == "lenovo" for _, v in rows)


#: Facts as agents report them (``HardwareFacts``: these fields are strings).
FLEET: dict[str, dict[str, Any]] = {
    "pc-1": {"hostname": "pc-1", "model": "ThinkPad T14", "vendor": "LENOVO", "os_release": DEB},
    "pc-2": {"hostname": "pc-2", "model": "thinkpad x1", "sys_vendor": "LENOVO"},
    "lab-3": {"hostname": "lab-3", "model": "Latitude 50%_off", "os_release": UBUNTU},
    "lab-4": {"hostname": "lab-4", "model": "", "cpu_vendor": "GenuineIntel"},
    "srv-5": {"hostname": "srv-5", "model": "İSTANBUL", "boot_mode": "uefi"},
}
FILTERS = [
    "model=ThinkPad*",
    "model=*pad*",
    "model=thinkpad x1,hostname=pc-*",
    "model=Latitude 50%_off",
    "model=Latitude 5?%_off",
    "model=*",
    "model=",
    "model!=ThinkPad*",
    "model=[Tt]hink*",
    "os_release.ID=debian",
    "hostname=lab-*,cpu_vendor=Genuine*",
    "model=İ*",
    "boot_mode=uefi",
    "cvd.name=c-pc-*",
]


def test_collection_filters_read_from_the_rows_as_from_the_facts(engine: Engine) -> None:
    """The database drops CVDs by the hardware-fact rows before reading facts: the members
    are still exactly those ``collections.matches`` picks from the whole facts."""
    with write_tx(engine) as c:
        c.execute(
            insert(policies).values(
                id="p", name="std", version=1, settings={}, created=NOW, updated=NOW
            )
        )
    for i, (name, facts) in enumerate(FLEET.items()):
        add(engine, name, facts)
        with write_tx(engine) as c:
            c.execute(
                insert(cvds).values(
                    id=f"c{i}", name=f"c-{name}", device_id=name, policy_id="p",
                    policy_version=1, reference=False, state="active", created=NOW, progress={},
                )
            )  # fmt: skip
    with write_tx(engine) as c:
        for i, text in enumerate(FILTERS):
            c.execute(
                insert(collections).values(id=f"k{i}", name=f"k{i}", filter=text, created=NOW)
            )
    got = {x.filter: x.members for x in coll_service.list_collections(engine, READER)}
    for text in FILTERS:
        conds = coll_service.parse_filter(text)
        want = [
            f"c-{name}"
            for name, facts in FLEET.items()
            if coll_service.matches(conds, {**facts, "cvd": {"name": f"c-{name}", "policy": "std"}})
        ]
        assert got[text] == sorted(want), text
    assert got["model=ThinkPad*"] == ["c-pc-1"]  # case matters, as in the facts
