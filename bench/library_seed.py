"""Rows for the driver library and flex pages, written straight through Lamina's schema.

One seeding, used at two scales: ``bench.console`` fills a large site's library to time the
console's pages, and ``tests/server/test_queries.py`` adds a few rows at a time to show
that a list page costs the same queries for 2 rows as for 8.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Table, insert

from lamina.db.engine import write_tx
from lamina.db.models import (
    driver_profiles,
    flex_entitlement_subjects,
    flex_entitlements,
    flex_image_versions,
    flex_images,
    flex_instances,
    flex_policies,
    layer_versions,
    layers,
    user_group_members,
    user_groups,
    users,
)

#: a row's id from its table's short name and its index (``"pack", 3``)
IdFn = Callable[[str, int], str]
VENDORS = ["LENOVO", "Dell Inc.", "HP", "ASUSTeK"]
INSTANCE_STATES = ("active", "locked", "revoked")


@dataclass(frozen=True)
class LibrarySize:
    """How many of each row; links go round by index (user ``u`` is in group ``u % groups``,
    entitlement ``e`` grants image ``e % images`` under policy ``e % flex_policies``...)."""

    packs: int  # each with a driver profile naming it
    pack_versions: int
    users: int
    groups: int
    images: int
    image_versions: int
    flex_policies: int
    entitlements: int  # each for one user and one group
    instances: int  # of the entitlements' images' latest versions

    @classmethod
    def each(cls, n: int) -> LibrarySize:
        """``n`` of every row, two versions of each pack and image."""
        return cls(n, 2, n, n, n, 2, n, n, n)


#: a large site: 50 driver packs of 3 versions and 50 profiles; 200 flex users in 20 groups;
#: 20 images of 3 versions, 10 flex policies, 100 entitlements and 2,000 instances
LARGE_SITE = LibrarySize(50, 3, 200, 20, 20, 3, 10, 100, 2000)


def library_rows(
    size: LibrarySize, now: dt.datetime, new_id: IdFn, first: int = 0
) -> dict[Table, list[dict[str, Any]]]:
    """The rows of ``size``, indices (and so names) starting at ``first``."""
    rows: dict[Table, list[dict[str, Any]]] = {}

    def add(table: Table, **values: Any) -> dict[str, Any]:
        rows.setdefault(table, []).append(values)
        return values

    def span(n: int) -> range:
        return range(first, first + n)

    for i in span(size.packs):
        pack = add(layers, id=new_id("pack", i), name=f"drivers-{i:02d}", kind="driver",
                   created=now)  # fmt: skip
        for v in range(1, size.pack_versions + 1):
            add(
                layer_versions, id=new_id(f"pack{i}v", v), layer_id=pack["id"], version=v,
                created=now, root=bytes(32), whiteouts=[], source_cvd=None,
                source_snapshot=None, notes="", files=40, bytes=30 * 10**6,
                apps={"packages": {f"firmware-{i}": f"1.{v}"}, "loose_files": 3},
            )  # fmt: skip
        add(
            driver_profiles, id=new_id("profile", i), name=f"profile-{i:02d}", os_family=None,
            notes="", created=now, updated=now, packs=[{"name": pack["name"], "version": None}],
            matches=[f"sys_vendor={VENDORS[i % 4]}", f"product_name=*{i:02d}*"],
        )  # fmt: skip
    people: list[dict[str, Any]] = []
    teams: list[dict[str, Any]] = []
    for u in span(size.users):
        people.append(add(users, id=new_id("user", u), name=f"flex-{u:03d}", password_hash="x",
                          role="flex-user", disabled=False, created=now))  # fmt: skip
    for g in span(size.groups):
        teams.append(add(user_groups, id=new_id("group", g), name=f"team-{g:02d}", created=now))
    for u, person in enumerate(people):
        add(user_group_members, group_id=teams[u % size.groups]["id"], user_id=person["id"])
    images: list[list[dict[str, Any]]] = []  # each image's versions
    for i in span(size.images):
        img = add(flex_images, id=new_id("image", i), name=f"image-{i:02d}", created=now)
        versions: list[dict[str, Any]] = []
        for v in range(1, size.image_versions + 1):
            versions.append(add(
                flex_image_versions, id=new_id(f"image{i}v", v), image_id=img["id"],
                version=v, created=now, size=40 << 30, memory_mib=4096, cpus=2,
                firmware="uefi", snapshot_id=bytes(32).hex(), pieces=[], source={},
            ))  # fmt: skip
        images.append(versions)
    fpols: list[dict[str, Any]] = []
    for p in span(size.flex_policies):
        fpols.append(add(
            flex_policies, id=new_id("flexpolicy", p), name=f"flex-policy-{p}",
            restrictions={}, expires_at=None, valid_for=None, lease_seconds=7 * 86400,
            created=now, updated=now,
        ))  # fmt: skip
    ents = []
    for k, e in enumerate(span(size.entitlements)):
        ent = add(
            flex_entitlements, id=new_id("entitlement", e), name=f"entitlement-{e:03d}",
            image_id=images[k % size.images][0]["image_id"], version=None,
            policy_id=fpols[k % size.flex_policies]["id"], manage=False, cvd_policy_id=None,
            layers={}, created=now,
        )  # fmt: skip
        ents.append(ent)
        add(flex_entitlement_subjects, entitlement_id=ent["id"], kind="group",
            subject_id=teams[k % size.groups]["id"])  # fmt: skip
        add(flex_entitlement_subjects, entitlement_id=ent["id"], kind="user",
            subject_id=people[k % size.users]["id"])  # fmt: skip
    for k, n in enumerate(span(size.instances)):
        add(
            flex_instances, id=new_id("instance", n),
            entitlement_id=ents[k % size.entitlements]["id"], user_id=people[k % size.users]["id"],
            version_id=images[k % size.images][-1]["id"],
            policy_id=None, state=INSTANCE_STATES[k % 3], message="", client=f"laptop-{n}",
            created=now, last_checkin=now, enroll_token_id=None, device_id=None,
        )  # fmt: skip
    return rows


def add_library(
    engine: Engine, size: LibrarySize, now: dt.datetime, new_id: IdFn, first: int = 0
) -> dict[Table, list[dict[str, Any]]]:
    """Write ``library_rows`` in one transaction; returns the rows written."""
    rows = library_rows(size, now, new_id, first)
    with write_tx(engine) as c:
        for table, values in rows.items():
            for k in range(0, len(values), 5000):
                c.execute(insert(table), values[k : k + 5000])
    return rows
