"""List pages cost a fixed number of queries, not one (or three) per row."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bench.library_seed import LibrarySize
from sqlalchemy import Engine, event, insert, update

from bench import library_seed
from lamina.db.engine import make_engine, write_tx
from lamina.db.migrate import upgrade
from lamina.db.models import (
    collection_members,
    collections,
    cvds,
    devices,
    driver_profiles,
    layer_versions,
    layers,
    policies,
    snapshots,
)
from lamina.errors import NotFoundError
from lamina.server.security import Principal
from lamina.server.services import collections as coll_service
from lamina.server.services import dashboard, drivers, fleet, flex, groups
from lamina.server.services import flex_images as image_service
from lamina.server.services import flex_policies as flex_policy_service
from lamina.server.services import layers as layer_service

READER = Principal("user", "u", "reader", "readonly", frozenset({"read"}))
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(e)
    with write_tx(e) as c:
        c.execute(
            insert(policies).values(
                id="p1", name="std", version=1, settings={}, created=NOW, updated=NOW
            )
        )
        c.execute(insert(collections).values(id="all", name="all", filter="", created=NOW))
        c.execute(
            insert(collections).values(
                id="deb", name="debian", filter="os_release.ID=debian", created=NOW
            )
        )
    yield e
    e.dispose()


def add_cvds(engine: Engine, first: int, n: int) -> None:
    """``n`` devices, each with an active CVD of two snapshots, all hand-picked into ``all``."""
    with write_tx(engine) as c:
        for i in range(first, first + n):
            c.execute(
                insert(devices).values(
                    id=f"d{i}",
                    hostname=f"desk-{i}",
                    status="active",
                    facts={"os_release": {"ID": "debian" if i % 2 else "fedora"}},
                    credential_hash=f"{i:064x}",
                    enrolled=NOW,
                    agent_state={},
                )
            )
            c.execute(
                insert(cvds).values(
                    id=f"c{i}",
                    name=f"cvd-{i}",
                    device_id=f"d{i}",
                    policy_id="p1",
                    policy_version=1,
                    reference=False,
                    state="active",
                    created=NOW + dt.timedelta(seconds=i),
                    progress={},
                )
            )
            for k in range(2):
                c.execute(
                    insert(snapshots).values(
                        id=f"s{i}-{k}",
                        time=NOW,
                        source=fleet.cvd_source(f"c{i}"),
                        root=bytes(32),
                        files=0,
                        bytes=0,
                        meta={},
                    )
                )
            c.execute(insert(collection_members).values(collection_id="all", cvd_id=f"c{i}"))
            # and a base layer and a driver pack, each of two versions
            for kind in ("base", "driver"):
                c.execute(
                    insert(layers).values(
                        id=f"{kind}{i}", name=f"{kind}-{i}", kind=kind, created=NOW
                    )
                )
                for v in (1, 2):
                    c.execute(
                        insert(layer_versions).values(
                            id=f"{kind}{i}v{v}",
                            layer_id=f"{kind}{i}",
                            version=v,
                            created=NOW,
                            root=bytes(32),
                            whiteouts=[],
                            notes="",
                            files=0,
                            bytes=0,
                            apps={},
                        )
                    )


def queries(engine: Engine, call: Callable[[], object]) -> int:
    count = 0

    def seen(*_: object) -> None:
        nonlocal count
        count += 1

    event.listen(engine, "before_cursor_execute", seen)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    return count


PAGES: dict[str, Callable[[Engine], object]] = {
    "list_cvds": lambda e: fleet.list_cvds(e, READER),
    "list_devices": lambda e: fleet.list_devices(e, READER),
    "list_collections": lambda e: coll_service.list_collections(e, READER),
    "device_page": lambda e: dashboard.device_page(e, READER, dashboard.DeviceQuery()),
    "list_layers": lambda e: layer_service.list_layers(e, READER),
    "list_packs": lambda e: drivers.list_packs(e, READER),
}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_a_list_page_costs_the_same_queries_for_2_rows_as_for_8(engine: Engine, page: str) -> None:
    add_cvds(engine, 0, 2)
    PAGES[page](engine)  # indexes the devices add_cvds wrote as enrollment would have
    small = queries(engine, lambda: PAGES[page](engine))
    add_cvds(engine, 2, 6)
    PAGES[page](engine)
    assert queries(engine, lambda: PAGES[page](engine)) == small


def test_the_pages_show_what_the_rows_hold(engine: Engine) -> None:
    add_cvds(engine, 0, 3)
    listed = fleet.list_cvds(engine, READER)
    assert [(x.name, x.hostname, x.policy, x.snapshots) for x in listed] == [
        (f"cvd-{i}", f"desk-{i}", "std", 2) for i in range(3)
    ]
    assert [d.cvd_id for d in fleet.list_devices(engine, READER)] == ["c0", "c1", "c2"]
    groups = {g.name: g.members for g in coll_service.list_collections(engine, READER)}
    assert groups == {"all": ["cvd-0", "cvd-1", "cvd-2"], "debian": ["cvd-1"]}
    listed_layers = layer_service.list_layers(engine, READER)
    assert [(x.name, [v.id for v in x.versions]) for x in listed_layers] == [
        (f"base-{i}", [f"base{i}v1", f"base{i}v2"]) for i in range(3)
    ]
    packs = drivers.list_packs(engine, READER)
    assert [(x.name, [v.version for v in x.versions]) for x in packs] == [
        (f"driver-{i}", [1, 2]) for i in range(3)
    ]
    with pytest.raises(NotFoundError, match="driver pack"):  # a clear refusal, not a 500
        layer_service.show_layer(engine, READER, "driver-0")


def add_library(engine: Engine, first: int, n: int) -> None:
    """``n`` of each row the driver library and flex pages list (bench/library_seed.py):
    a driver pack of two versions and a profile naming it; a user in a group; a flex image
    of two versions, a flex policy, an entitlement for the user and the group, and an
    instance of it."""
    library_seed.add_library(engine, LibrarySize.each(n), NOW, lambda kind, i: f"{kind}{i}", first)


#: The console's driver library and flex pages (``views_drivers``, ``views_flex``).
LIBRARY: dict[str, Callable[[Engine], object]] = {
    "list_packs": lambda e: drivers.list_packs(e, READER),
    "list_profiles": lambda e: drivers.list_profiles(e, READER),
    "list_images": lambda e: image_service.list_images(e, READER),
    "list_flex_policies": lambda e: flex_policy_service.list_policies(e, READER),
    "list_entitlements": lambda e: flex.list_entitlements(e, READER),
    "list_instances": lambda e: flex.list_instances(e, READER),
    "list_groups": lambda e: groups.list_groups(e, READER),
}


@pytest.mark.parametrize("page", sorted(LIBRARY))
def test_a_library_page_costs_the_same_queries_for_2_rows_as_for_8(
    engine: Engine, page: str
) -> None:
    add_library(engine, 0, 2)
    small = queries(engine, lambda: LIBRARY[page](engine))
    add_library(engine, 2, 6)
    listed = LIBRARY[page](engine)
    assert isinstance(listed, list) and len(listed) == 8
    assert queries(engine, lambda: LIBRARY[page](engine)) == small


def test_a_profile_test_costs_the_same_queries_for_2_devices_as_for_8(engine: Engine) -> None:
    """A driver profile's Test (``drivers.test_profile``): a fixed number of queries, once
    the devices written without ``drivers_index`` (as ``add_cvds`` writes them) are indexed."""

    def lenovo(first: int, n: int) -> None:
        with write_tx(engine) as c:
            for i in range(first, first + n):
                c.execute(
                    update(devices)
                    .where(devices.c.id == f"d{i}")
                    .values(facts={"sys_vendor": "LENOVO", "os_release": {"ID": "debian"}})
                )

    with write_tx(engine) as c:
        c.execute(
            insert(driver_profiles).values(
                id="dp0", name="prof-0", os_family=None, notes="", created=NOW, updated=NOW,
                packs=[{"name": "pack-0", "version": None}], matches=["sys_vendor=LENOVO"],
            )
        )  # fmt: skip
    add_cvds(engine, 0, 2)
    lenovo(0, 2)
    assert len(drivers.test_profile(engine, READER, "prof-0")) == 2  # indexes them
    small = queries(engine, lambda: drivers.test_profile(engine, READER, "prof-0"))
    add_cvds(engine, 2, 6)
    lenovo(2, 6)
    assert len(drivers.test_profile(engine, READER, "prof-0")) == 8
    assert queries(engine, lambda: drivers.test_profile(engine, READER, "prof-0")) == small
