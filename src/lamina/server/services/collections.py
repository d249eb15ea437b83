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
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import collection_members, collections, cvds, devices, policies
from lamina.errors import ConflictError, UsageError
from lamina.server.security import Principal
from lamina.server.services import fleet
from lamina.server.services.common import audit, aware, find_one, new_id, now

_COND = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*(!?=)\s*(.*?)\s*$")


def parse_filter(text: str) -> list[tuple[str, bool, str]]:
    out = []
    for part in [p for p in text.split(",") if p.strip()]:
        m = _COND.match(part)
        if not m:
            raise UsageError(f"bad filter condition {part!r}: use FIELD=GLOB or FIELD!=GLOB")
        out.append((m.group(1), m.group(2) == "=", m.group(3)))
    return out


def _value(fields: dict[str, Any], name: str) -> str:
    cur: Any = fields
    for part in name.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def matches(conds: list[tuple[str, bool, str]], fields: dict[str, Any]) -> bool:
    return all(fnmatch.fnmatchcase(_value(fields, f), g) == want for f, want, g in conds)


def _candidates(c: Connection) -> list[Any]:
    """Every CVD with its device's facts and its policy's name, in one query."""
    return list(
        c.execute(
            select(
                cvds,
                devices.c.facts.label("device_facts"),
                policies.c.name.label("policy_name"),
            )
            .select_from(
                cvds.outerjoin(devices, devices.c.id == cvds.c.device_id).join(
                    policies, policies.c.id == cvds.c.policy_id
                )
            )
            .order_by(cvds.c.name)
        )
    )


def _static(c: Connection) -> dict[str, set[str]]:
    """Each collection's hand-picked members (one query for every collection)."""
    out: dict[str, set[str]] = {}
    for m in c.execute(select(collection_members)):
        out.setdefault(m.collection_id, set()).add(m.cvd_id)
    return out


def _select(coll: Any, candidates: list[Any], static: set[str]) -> list[Any]:
    conds = parse_filter(coll.filter)
    out = []
    for cvd in candidates:
        if cvd.id in static:
            out.append(cvd)
            continue
        if not conds or cvd.state != fleet.ACTIVE:
            continue
        fields = {**(cvd.device_facts or {}), "cvd": {"name": cvd.name, "policy": cvd.policy_name}}
        if matches(conds, fields):
            out.append(cvd)
    return out


def members(c: Connection, coll: Any) -> list[Any]:
    """The CVDs of a collection: static members plus every active CVD its filter matches."""
    return _select(coll, _candidates(c), _static(c).get(coll.id, set()))


def _public(c: Connection, r: Any) -> dict[str, Any]:
    return _page(c, [r])[0]


def _page(c: Connection, rows: list[Any]) -> list[dict[str, Any]]:
    """Collections with their members: three queries for the page, whatever its size."""
    candidates, static = _candidates(c), _static(c)
    return [
        {
            "id": r.id,
            "name": r.name,
            "filter": r.filter,
            "created": aware(r.created),
            "members": [m.name for m in _select(r, candidates, static.get(r.id, set()))],
        }
        for r in rows
    ]


def create(
    engine: Engine, actor: Principal, name: str, filter_: str, cvd_refs: list[str]
) -> dict[str, Any]:
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


def list_collections(engine: Engine, actor: Principal) -> list[dict[str, Any]]:
    actor.require("read")
    with read_tx(engine) as c:
        return _page(c, list(c.execute(select(collections).order_by(collections.c.name))))


def cvd_refs(engine: Engine, name: str) -> list[str]:
    with read_tx(engine) as c:
        return [m.id for m in members(c, find_one(c, collections, name, "name", "collection"))]
