"""What the console shows at a glance: device health counts, a paged device list, store usage.

Every function here answers with a fixed number of queries, whatever the number
of devices: the counts are one aggregate, a page of the device list is one query
for its rows, one for its total and one per page for the layer labels of its CVDs.

Health of a device (the same words the dashboard links with):

- ``pending``: enrolled, not yet centralized or rejected;
- ``online``: has an active CVD and checked in within twice its policy's interval;
- ``offline``: has an active CVD and no check-in for longer than that;
- ``failing``: the newest finished task of its CVD failed, or its agent reported
  that its last scheduled sync failed (state ``error``);
- ``lowdisk``: the agent reported less than ``LOW_DISK`` bytes free.
"""

from __future__ import annotations

import datetime as dt
import threading
import weakref
from dataclasses import dataclass, field

from sqlalchemy import (
    Connection,
    Engine,
    Join,
    Select,
    and_,
    case,
    false,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.sql.elements import ColumnElement

from lamina.db.engine import read_tx
from lamina.db.models import (
    collection_members,
    collections,
    cvd_layers,
    cvds,
    devices,
    layer_versions,
    layers,
    packs,
    policies,
    snapshots,
    tasks,
)
from lamina.db.stores import last_gc
from lamina.errors import NotFoundError, UsageError
from lamina.protocol.schemas import PolicySettings
from lamina.server.security import Principal
from lamina.server.services.agent_events import LOW_DISK
from lamina.server.services.common import aware, now
from lamina.server.services.events import unacknowledged
from lamina.server.services.fleet import ACTIVE, PENDING
from lamina.server.services.rows import Device, JsonObject

HEALTH = ("pending", "online", "offline", "failing", "lowdisk")
SORTS = {
    "hostname": devices.c.hostname,
    "enrolled": devices.c.enrolled,
    "last_seen": devices.c.last_seen,
    "last_sync": cvds.c.last_sync,
    "policy": policies.c.name,
    "status": devices.c.status,
}
MAX_PAGE = 200


def _offline_after(c: Connection, at: dt.datetime) -> ColumnElement[bool]:
    """True for an active CVD's device silent for longer than twice its policy's interval.

    Policies are few: one condition per policy, each a constant cut-off time.
    """
    conds = []
    for pid, settings in c.execute(select(policies.c.id, policies.c.settings)):
        interval = PolicySettings(**settings).interval
        cutoff = at - dt.timedelta(seconds=2 * interval)
        conds.append(
            and_(
                cvds.c.policy_id == pid,
                or_(devices.c.last_seen.is_(None), devices.c.last_seen < cutoff),
            )
        )
    return or_(false(), *conds)


def _failing_cvds() -> Select[tuple[str]]:
    """The ids of CVDs whose newest finished task failed.

    Starts from the failed tasks (few, by the state index) and keeps those with no
    finished task of the same CVD after them (by the CVD index).
    """
    later = tasks.alias("later")
    newer = (
        select(later.c.id)
        .where(
            later.c.cvd_id == tasks.c.cvd_id,
            later.c.state.in_(("done", "failed")),
            later.c.created > tasks.c.created,
        )
        .exists()
    )
    return select(tasks.c.cvd_id).where(
        tasks.c.state == "failed", tasks.c.cvd_id.is_not(None), ~newer
    )


def _active() -> ColumnElement[bool]:
    """A device with its active CVD: the online, offline, failing and low-disk ones."""
    return and_(devices.c.status == ACTIVE, cvds.c.id.is_not(None))


def _conditions(c: Connection, at: dt.datetime) -> dict[str, ColumnElement[bool]]:
    active = _active()
    offline = _offline_after(c, at)
    free = devices.c.agent_state["disk_free"].as_float()  # bytes: past int4 on PostgreSQL
    return {
        "pending": devices.c.status == PENDING,
        "online": and_(active, ~offline),
        "offline": and_(active, offline),
        "failing": and_(
            active,
            or_(
                cvds.c.id.in_(_failing_cvds()),
                devices.c.agent_state["state"].as_string() == "error",
            ),
        ),
        "lowdisk": and_(active, free.is_not(None), free < LOW_DISK),
    }


def _joined() -> Join:
    return devices.outerjoin(
        cvds, and_(cvds.c.device_id == devices.c.id, cvds.c.state == ACTIVE)
    ).outerjoin(policies, policies.c.id == cvds.c.policy_id)


@dataclass
class StoreUsage:
    pack_bytes: int
    logical_bytes: int
    snapshots: int
    growth_7d: int

    @property
    def reduction(self) -> float:
        """Bytes the snapshots describe per byte stored (deduplication and compression)."""
        return self.logical_bytes / self.pack_bytes if self.pack_bytes else 0.0


@dataclass
class Summary:
    counts: dict[str, int]
    total: int
    usage: StoreUsage | None
    #: When these were counted (``recent_summary`` hands out a copy a few seconds old).
    at: dt.datetime = field(default_factory=now)


#: How old the console's dashboard counts may be (seconds): its own refresh interval.
SUMMARY_MAX_AGE = 5.0
#: The newest summary counted on each database (its usage included, or not).
_recent: weakref.WeakKeyDictionary[Engine, dict[bool, Summary]] = weakref.WeakKeyDictionary()
_recent_lock = threading.Lock()


def forget_recent(engine: Engine) -> None:
    """Drop the counts ``recent_summary`` keeps for ``engine`` (the next call counts)."""
    with _recent_lock:
        _recent.pop(engine, None)


def recent_summary(
    engine: Engine, actor: Principal, usage: bool = True, max_age: float = SUMMARY_MAX_AGE
) -> Summary:
    """``summary``, counted at most ``max_age`` seconds ago: the dashboard asks every few
    seconds for each admin who has it open, and shows when its counts were taken
    (``Summary.at``). One with the usage serves one without."""
    actor.require("read")
    at = now()
    with _recent_lock:
        kept = _recent.setdefault(engine, {})
        hit = kept.get(True) or (None if usage else kept.get(False))
    if hit is not None and 0 <= (at - hit.at).total_seconds() < max_age:
        return hit
    fresh = summary(engine, actor, usage)
    with _recent_lock:
        _recent.setdefault(engine, {})[usage] = fresh
    return fresh


def summary(engine: Engine, actor: Principal, usage: bool = True) -> Summary:
    """The dashboard's counts (one aggregate query) and, with ``usage``, the store's."""
    actor.require("read")
    at = now()
    with read_tx(engine) as c:
        conds = _conditions(c, at)
        # Online is active less offline: one policy cut-off test per row, not two.
        summed = {**{k: v for k, v in conds.items() if k != "online"}, "active": _active()}
        cols = [func.sum(case((cond, 1), else_=0)).label(k) for k, cond in summed.items()]
        row = c.execute(select(func.count().label("total"), *cols).select_from(_joined())).one()
        got = {k: int(getattr(row, k) or 0) for k in summed}
        counts = {k: got[k] for k in conds if k != "online"}
        counts["online"] = got["active"] - got["offline"]
        counts = {k: counts[k] for k in conds}  # in HEALTH's order
        if not usage:
            return Summary(counts, int(row.total), None)
        pack_bytes, growth = c.execute(
            select(
                func.coalesce(func.sum(packs.c.size), 0),
                func.coalesce(
                    func.sum(case((packs.c.created >= at - dt.timedelta(days=7), packs.c.size))),
                    0,
                ),
            )
        ).one()
        logical, n = c.execute(
            select(func.coalesce(func.sum(snapshots.c.bytes), 0), func.count())
        ).one()
    return Summary(
        counts=counts,
        total=int(row.total),
        usage=StoreUsage(int(pack_bytes), int(logical), int(n), int(growth)),
    )


@dataclass
class Gauges:
    """What ``/metrics`` reads at each scrape: the summary, tasks by state, packs, events."""

    summary: Summary
    tasks: dict[str, int]
    packs: int
    events: dict[str, int]
    gc_seconds: float | None


def gauges(engine: Engine, actor: Principal) -> Gauges:
    """The dashboard's counts and the store's usage, with tasks by state, the number of
    packs, unacknowledged events by severity and the last gc's duration: a fixed number
    of aggregate queries, whatever the size of the fleet."""
    s = summary(engine, actor)
    with read_tx(engine) as c:
        by_state = {
            str(state): int(n)
            for state, n in c.execute(
                select(tasks.c.state, func.count()).group_by(tasks.c.state)
            ).all()
        }
        n_packs = int(c.execute(select(func.count()).select_from(packs)).scalar_one())
    last = last_gc(engine)
    seconds = last.get("seconds") if last else None
    return Gauges(
        summary=s,
        tasks=by_state,
        packs=n_packs,
        events=unacknowledged(engine, actor),
        gc_seconds=float(seconds) if isinstance(seconds, int | float) else None,
    )


@dataclass
class DeviceQuery:
    search: str = ""
    health: str = ""
    sort: str = "hostname"
    descending: bool = False
    page: int = 1
    size: int = 50

    def check(self) -> None:
        if self.health and self.health not in HEALTH:
            raise UsageError(f"unknown state filter {self.health!r} (one of {', '.join(HEALTH)})")
        if self.sort not in SORTS:
            raise UsageError(f"cannot sort by {self.sort!r} (one of {', '.join(SORTS)})")
        if self.page < 1 or not 1 <= self.size <= MAX_PAGE:
            raise UsageError(f"page must be 1 or more and page size between 1 and {MAX_PAGE}")
        if len(self.search) > 255:
            raise UsageError("search text is longer than 255 characters")


@dataclass
class DeviceRow:
    id: str
    hostname: str
    status: str
    model: str
    os: str
    enrolled: dt.datetime | None
    last_seen: dt.datetime | None
    cvd_id: str | None
    cvd_name: str | None
    policy: str | None
    last_sync: dt.datetime | None
    disk_free: int | None
    layers: list[str] = field(default_factory=list)
    collections: list[str] = field(default_factory=list)
    #: The health states (``HEALTH``) the device is in: the dashboard's conditions.
    health: list[str] = field(default_factory=list)
    agent_version: str = ""
    vendor: str = ""


@dataclass
class DevicePage:
    rows: list[DeviceRow]
    total: int
    query: DeviceQuery

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.query.size))


def _os_name(facts: JsonObject) -> str:
    rel = facts.get("os_release") or {}
    if not isinstance(rel, dict):
        return ""
    return str(
        rel.get("PRETTY_NAME") or " ".join(str(rel.get(k, "")) for k in ("ID", "VERSION_ID"))
    )


def device_page(engine: Engine, actor: Principal, q: DeviceQuery) -> DevicePage:
    """One page of devices with their CVD, policy, layers and collections, filtered and sorted."""
    actor.require("read")
    q.check()
    with read_tx(engine) as c:
        where: list[ColumnElement[bool]] = []
        conds = _conditions(c, now())
        if q.health:
            where.append(conds[q.health])
        if q.search:
            like = (
                "%" + q.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            )
            # SQLite's LIKE ignores ASCII case as its lower() does (no ICU): the same match
            # as ILIKE's lower(x) LIKE lower(y), without a function call per row and column.
            sqlite = c.dialect.name == "sqlite"
            where.append(
                or_(
                    *(
                        col.like(like, escape="\\") if sqlite else col.ilike(like, escape="\\")
                        for col in (devices.c.hostname, cvds.c.name, policies.c.name)
                    )
                )
            )
        col = SORTS[q.sort]
        order = [col.desc() if q.descending else col.asc(), devices.c.id]
        matching = select(devices.c.id).select_from(_joined()).where(literal(True), *where)
        total: int | None = None
        # The page's ids first (a narrow sort), then their rows: the sort never carries
        # the devices' JSON columns. A search reads every row whatever the sort: the
        # number of matches comes from the same pass (a window count); otherwise the
        # sort's index stops after the page and the count is a query of its own.
        page = matching.order_by(*order).limit(q.size).offset((q.page - 1) * q.size)
        if q.search:
            paged = c.execute(page.add_columns(func.count().over().label("total"))).all()
            page_ids = [r.id for r in paged]
            total = paged[0].total if paged else None
        else:
            page_ids = list(c.execute(page).scalars())
        if total is None:
            total = c.execute(
                select(func.count()).select_from(_joined()).where(literal(True), *where)
            ).scalar_one()
        found = {
            r.id: r
            for r in c.execute(
                select(
                    devices.c.id,
                    devices.c.hostname,
                    devices.c.status,
                    devices.c.facts,
                    devices.c.enrolled,
                    devices.c.last_seen,
                    devices.c.agent_state,
                    cvds.c.id.label("cvd_id"),
                    cvds.c.name.label("cvd_name"),
                    cvds.c.last_sync,
                    policies.c.name.label("policy"),
                    *(case((cond, 1), else_=0).label(f"is_{k}") for k, cond in conds.items()),
                )
                .select_from(_joined())
                .where(devices.c.id.in_(page_ids))
            )
        }
        rows = [found[i] for i in page_ids]
        ids = [r.cvd_id for r in rows if r.cvd_id]
        labels: dict[str, list[str]] = {}
        groups: dict[str, list[str]] = {}
        if ids:
            for cid, name, ver in c.execute(
                select(cvd_layers.c.cvd_id, layers.c.name, layer_versions.c.version)
                .join(layer_versions, layer_versions.c.id == cvd_layers.c.version_id)
                .join(layers, layers.c.id == layer_versions.c.layer_id)
                .where(cvd_layers.c.cvd_id.in_(ids))
                .order_by(cvd_layers.c.cvd_id, cvd_layers.c.position)
            ):
                labels.setdefault(cid, []).append(f"{name}:{ver}")
            for cid, name in c.execute(
                select(collection_members.c.cvd_id, collections.c.name)
                .join(collections, collections.c.id == collection_members.c.collection_id)
                .where(collection_members.c.cvd_id.in_(ids))
                .order_by(collections.c.name)
            ):
                groups.setdefault(cid, []).append(name)
    out = []
    for r in rows:
        facts = r.facts or {}
        free = (r.agent_state or {}).get("disk_free")
        out.append(
            DeviceRow(
                id=r.id,
                hostname=r.hostname,
                status=r.status,
                model=str(facts.get("model", "")),
                os=_os_name(facts),
                enrolled=aware(r.enrolled),
                last_seen=aware(r.last_seen),
                cvd_id=r.cvd_id,
                cvd_name=r.cvd_name,
                policy=r.policy,
                last_sync=aware(r.last_sync),
                disk_free=free if isinstance(free, int) else None,
                layers=labels.get(r.cvd_id, []) if r.cvd_id else [],
                collections=groups.get(r.cvd_id, []) if r.cvd_id else [],
                health=[k for k in HEALTH if getattr(r, f"is_{k}", 0)],
                agent_version=str(facts.get("agent_version", ""))[:64],
                vendor=str(facts.get("vendor", "")),
            )
        )
    return DevicePage(out, int(total), q)


@dataclass
class DeviceFacts:
    id: str
    hostname: str
    status: str
    facts: JsonObject
    enrolled: dt.datetime | None
    last_seen: dt.datetime | None
    agent: JsonObject


def _device_facts(r: Device) -> DeviceFacts:
    return DeviceFacts(
        r.id,
        r.hostname,
        r.status,
        r.facts or {},
        aware(r.enrolled),
        aware(r.last_seen),
        r.agent_state or {},
    )


def device_of_cvd(engine: Engine, actor: Principal, cvd_id: str) -> DeviceFacts | None:
    """The device behind a CVD (None once archived without one)."""
    actor.require("read")
    with read_tx(engine) as c:
        r = c.execute(
            select(devices).join(cvds, cvds.c.device_id == devices.c.id).where(cvds.c.id == cvd_id)
        ).first()
    if r is None:
        return None
    return _device_facts(r)


def pending_device(engine: Engine, actor: Principal, device_id: str) -> DeviceFacts:
    """A pending device by id, for the centralize form."""
    actor.require("read")
    with read_tx(engine) as c:
        r = c.execute(select(devices).where(devices.c.id == device_id)).first()
    if r is None:
        raise NotFoundError(f"no device {device_id!r}")
    return _device_facts(r)
