"""What driver profiles can match, kept beside each device's facts (``device_match_facts``).

:func:`store` runs wherever a device's facts are written (enrollment, the agent's
reports), in that write's transaction, so the rows never disagree with the facts.
:func:`matching` answers a profile's test from these short rows: the database picks
the rows each match's glob could hold on (as a ``LIKE`` pattern where the glob has
one), and ``fnmatch`` decides on them, as ``Profile.applies`` does on the facts
themselves (``tests/server/test_drivers_index.py`` holds the two equal).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
)

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import device_match_facts as dmf
from lamina.db.models import devices
from lamina.layers.drivers import DMI_FIELDS, OS_FAMILY, Profile, match_values

#: The row that says a device is indexed (a device may have no matchable fact at all).
MARK = ("", "")
#: Longer values are not kept (the agent's facts are at most 256 characters; an
#: ``os_release`` ID is not bounded): a profile's test does not see them.
MAX_VALUE = 512
_BATCH = 500


def store(c: Connection, device_id: str, facts: object) -> None:
    """Replace a device's rows with those of ``facts`` (inside the caller's transaction)."""
    c.execute(delete(dmf).where(dmf.c.device_id == device_id))
    pairs = [MARK, *match_values(facts if isinstance(facts, dict) else {})]
    pairs = [(f, v) for f, v in pairs if len(v) <= MAX_VALUE]
    c.execute(insert(dmf), [{"device_id": device_id, "field": f, "value": v} for f, v in pairs])


def _unindexed() -> ColumnElement[bool]:
    return ~exists().where(dmf.c.device_id == devices.c.id)


def all_indexed(c: Connection) -> bool:
    """Whether every device has its rows (one query: it counts the marker rows)."""
    missing = c.execute(
        select(
            select(func.count()).select_from(devices).scalar_subquery()
            - select(func.count())
            .select_from(dmf)
            .where(dmf.c.field == MARK[0], dmf.c.value == MARK[1])
            .scalar_subquery()
        )
    ).scalar()
    return not missing


def fill(engine: Engine) -> int:
    """Index the devices that have no rows (devices from before revision 0010, or
    written without this module); how many it indexed. One query when there are none."""
    with read_tx(engine) as c:
        if all_indexed(c):
            return 0
        todo = list(c.execute(select(devices.c.id).where(_unindexed())).scalars())
    for k in range(0, len(todo), _BATCH):
        with write_tx(engine) as c:
            rows = c.execute(
                select(devices.c.id, devices.c.facts).where(
                    devices.c.id.in_(todo[k : k + _BATCH]), _unindexed()
                )
            )
            for r in rows.all():
                store(c, r.id, r.facts)
    return len(todo)


def like_of(glob: str) -> str | None:
    """The ``LIKE`` pattern (escape ``\\``) matching what the ``fnmatch`` glob matches,
    or None when the glob has a ``[...]`` class, which ``LIKE`` cannot say."""
    if "[" in glob:
        return None
    out = []
    for ch in glob:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "\\%_":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


#: The match fields whose fact is one string of at most 255 characters in every device's
#: facts (``HardwareFacts``): a device has a row for such a field exactly when its fact
#: is a non-empty string, and that row is the fact in lower case.
TEXT_FIELDS = frozenset({"hostname", "vendor", "model", "cpu_vendor", "boot_mode", *DMI_FIELDS})


def may_match(device_id: ColumnElement[str], field: str, glob: str) -> ColumnElement[bool] | None:
    """A condition true of every device whose fact ``field`` (a string) ``fnmatchcase``
    matches ``glob`` (and of a few more: it ignores case), to let the database drop the
    others before reading their facts; None when these rows cannot say it (not a
    ``TEXT_FIELDS`` field, a ``[...]`` class, a ``?``, which may stand for a letter
    that is two in lower case, or a glob that matches an absent fact)."""
    like = like_of(glob.lower())
    if field not in TEXT_FIELDS or like is None or "?" in glob or fnmatch.fnmatchcase("", glob):
        return None
    # Not correlated: the database reads the field's rows once, not once per device.
    return device_id.in_(
        select(dmf.c.device_id).where(dmf.c.field == field, dmf.c.value.like(like, escape="\\"))
    )


def matching(c: Connection, profile: Profile, statuses: Collection[str]) -> list[dict[str, str]]:
    """The devices (``id``, ``hostname``; hostname order) in ``statuses`` whose facts
    this profile matches: one query. Call :func:`fill` first."""
    conds = []
    for m in profile.matches:
        like = like_of(m.glob.lower())
        conds.append(
            and_(dmf.c.field == m.field, dmf.c.value.like(like, escape="\\"))
            if like is not None
            else dmf.c.field == m.field
        )
    family = profile.os_family.lower() if profile.os_family else None
    if family:
        conds.append(and_(dmf.c.field == OS_FAMILY, dmf.c.value == family))
    rows = c.execute(
        select(dmf.c.device_id, dmf.c.field, dmf.c.value, devices.c.hostname)
        .join(devices, devices.c.id == dmf.c.device_id)
        .where(devices.c.status.in_(statuses), or_(*conds))
    )
    values: dict[str, dict[str, list[str]]] = {}
    hostnames: dict[str, str] = {}
    for r in rows:
        values.setdefault(r.device_id, {}).setdefault(r.field, []).append(r.value)
        hostnames[r.device_id] = r.hostname
    out = []
    for did, got in values.items():
        if family and family not in got.get(OS_FAMILY, ()):
            continue
        if all(
            any(fnmatch.fnmatchcase(v, m.glob.lower()) for v in got.get(m.field, ()))
            for m in profile.matches
        ):
            out.append((hostnames[did], did))
    return [{"id": did, "hostname": host} for host, did in sorted(out)]
