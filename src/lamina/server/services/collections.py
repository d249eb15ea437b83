"""Collections: named sets of CVDs, by hand (members) or by a filter on device facts.

Filter language: comma-separated conditions, all of which must hold, each
``FIELD=GLOB`` or ``FIELD!=GLOB``, where FIELD is a device fact (``hostname``,
``vendor``, ``model``, ``os_release.ID``, ``os_release.VERSION_ID``, ...) or a
CVD attribute (``cvd.name``, ``cvd.policy``). Example:
``os_release.ID=debian,vendor=Dell*,hostname!=lab-*``.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Protocol

from sqlalchemy import ColumnElement, Connection, Engine, and_, insert, or_, select, true

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import collection_members, collections, cvds, devices, policies
from lamina.errors import ConflictError, UsageError
from lamina.protocol.schemas import CollectionPublic
from lamina.server.security import Principal
from lamina.server.services import drivers_index, fleet
from lamina.server.services.common import audit, aware, find_one, new_id, now
from lamina.server.services.rows import Collection, JsonObject, Named

_COND = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*(!?=)\s*(.*?)\s*$")


class _Candidate(Named, Protocol):
    """An active CVD a filter may match, with its policy's name (and the facts the filters
    name, as columns ``f0``, ``f1``... read with ``getattr``)."""

    @property
    def policy_name(self) -> str: ...


def parse_filter(text: str) -> list[tuple[str, bool, str]]:
    out = []
    for part in [p for p in text.split(",") if p.strip()]:
        m = _COND.match(part)
        if not m:
            raise UsageError(f"bad filter condition {part!r}: use FIELD=GLOB or FIELD!=GLOB")
        out.append((m.group(1), m.group(2) == "=", m.group(3)))
    return out


def _value(fields: JsonObject, name: str) -> str:
    cur: object = fields
    for part in name.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def matches(conds: list[tuple[str, bool, str]], fields: JsonObject) -> bool:
    return all(fnmatch.fnmatchcase(_value(fields, f), g) == want for f, want, g in conds)


def _field_value(cvd: _Candidate, field: str, fact: object) -> str:
    """What a condition on ``field`` compares, as ``_value`` reads it from the fields
    ``{**facts, "cvd": {"name": ..., "policy": ...}}`` (``fact``: the fact at that path)."""
    if field == "cvd":
        return str({"name": cvd.name, "policy": cvd.policy_name})
    if field.split(".")[0] == "cvd":
        return _value({"cvd": {"name": cvd.name, "policy": cvd.policy_name}}, field)
    return "" if fact is None else str(fact)


def _candidates(c: Connection, fields: list[str], where: ColumnElement[bool]) -> list[_Candidate]:
    """Every active CVD (that ``where`` keeps) with its policy's name and, from its
    device's facts, only the values at ``fields`` (extracted by the database: no CVD's
    whole facts are read)."""
    facts = [
        devices.c.facts[tuple(f.split("."))].label(f"f{i}")
        for i, f in enumerate(fields)
        if f.split(".")[0] != "cvd"
    ]
    return list(
        c.execute(
            select(cvds.c.id, cvds.c.name, policies.c.name.label("policy_name"), *facts)
            .select_from(
                cvds.outerjoin(devices, devices.c.id == cvds.c.device_id).join(
                    policies, policies.c.id == cvds.c.policy_id
                )
            )
            .where(cvds.c.state == fleet.ACTIVE, where)
            .order_by(cvds.c.name)
        )
    )


def _prefilter(c: Connection, filters: list[list[tuple[str, bool, str]]]) -> ColumnElement[bool]:
    """What the database can drop before reading facts: the CVDs that no filter can
    match by the hardware-fact rows of ``drivers_index`` (each filter with a condition
    those rows can judge); true (drop nothing) when one filter has none, or when a
    device has no rows yet."""
    per_filter = []
    for conds in filters:
        known = [
            x
            for f, want, g in conds
            if want and (x := drivers_index.may_match(cvds.c.device_id, f, g)) is not None
        ]
        if not known:
            return true()
        per_filter.append(and_(*known))
    return or_(*per_filter) if per_filter and drivers_index.all_indexed(c) else true()


def _static(c: Connection, ids: list[str]) -> dict[str, list[Named]]:
    """The hand-picked members (id, name) of the collections ``ids``, by name (one query)."""
    out: dict[str, list[Named]] = {}
    rows = c.execute(
        select(collection_members.c.collection_id, cvds.c.id, cvds.c.name)
        .join(cvds, cvds.c.id == collection_members.c.cvd_id)
        .where(collection_members.c.collection_id.in_(ids))
        .order_by(cvds.c.name)
    )
    for m in rows:
        out.setdefault(m.collection_id, []).append(m)
    return out


def _members(c: Connection, rows: list[Collection]) -> dict[str, list[Named]]:
    """The members (rows with ``id`` and ``name``, by name) of each collection in
    ``rows``: its static members plus every active CVD its filter matches. At most three
    queries whatever the number of collections and CVDs; the others only when a filter
    is set: the CVDs, with only the facts the filters name, of the devices whose
    hardware-fact rows (``drivers_index``) a filter may match."""
    static = _static(c, [r.id for r in rows])
    conds = {r.id: parse_filter(r.filter) for r in rows}
    fields = sorted({f for cs in conds.values() for f, _, _ in cs})
    filters = [cs for cs in conds.values() if cs]
    candidates = _candidates(c, fields, _prefilter(c, filters)) if fields else []
    col = {f: f"f{i}" for i, f in enumerate(fields)}
    values = [
        {f: _field_value(cvd, f, getattr(cvd, col[f], None)) for f in fields} for cvd in candidates
    ]
    out = {}
    for r in rows:
        chosen = {m.id: m for m in static.get(r.id, [])}
        if conds[r.id]:
            for cvd, vals in zip(candidates, values, strict=True):
                if cvd.id not in chosen and all(
                    fnmatch.fnmatchcase(vals[f], g) == want for f, want, g in conds[r.id]
                ):
                    chosen[cvd.id] = cvd
        out[r.id] = sorted(chosen.values(), key=lambda m: m.name)
    return out


def members(c: Connection, coll: Collection) -> list[Named]:
    """The CVDs (``id``, ``name``) of a collection: static members plus every active CVD
    its filter matches."""
    return _members(c, [coll])[coll.id]


def _public(c: Connection, r: Collection) -> CollectionPublic:
    return _page(c, [r])[0]


def _page(c: Connection, rows: list[Collection]) -> list[CollectionPublic]:
    """Collections with their members: three queries for the page, whatever its size."""
    found = _members(c, rows)
    return [
        CollectionPublic(
            id=r.id,
            name=r.name,
            filter=r.filter,
            created=aware(r.created),
            members=[m.name for m in found[r.id]],
        )
        for r in rows
    ]


def create(
    engine: Engine, actor: Principal, name: str, filter_: str, cvd_refs: list[str]
) -> CollectionPublic:
    actor.require("layer.write")
    parse_filter(filter_)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", name):
        raise UsageError("a collection name is letters, digits, '_', '.', '-'")
    with write_tx(engine) as c:
        if c.execute(select(collections.c.id).where(collections.c.name == name)).first():
            raise ConflictError(f"collection {name!r} exists already")
        cid = new_id()
        c.execute(insert(collections).values(id=cid, name=name, filter=filter_, created=now()))
        for ref in cvd_refs:
            c.execute(
                insert(collection_members).values(
                    collection_id=cid, cvd_id=fleet.find_cvd(c, ref).id
                )
            )
        audit(c, actor.name, "collection.create", name, filter=filter_, cvds=cvd_refs)
        return _public(c, find_one(c, collections, cid, "name", "collection"))


def list_collections(engine: Engine, actor: Principal) -> list[CollectionPublic]:
    actor.require("read")
    drivers_index.fill(engine)
    with read_tx(engine) as c:
        return _page(c, list(c.execute(select(collections).order_by(collections.c.name))))


def cvd_refs(engine: Engine, name: str) -> list[str]:
    drivers_index.fill(engine)
    with read_tx(engine) as c:
        return [m.id for m in members(c, find_one(c, collections, name, "name", "collection"))]
