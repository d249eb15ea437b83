"""Assigning layers to CVDs: the target (layers, driver packs, facts, rules), the plan
against the CVD's last snapshot (with a dry run), and the delivery: the delta stored,
then the assignment recorded and a ``layer-apply`` task queued. Also ``enforce`` (back
to the assigned layers) and the assigned/running labels of a CVD."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import Connection, Engine, Table, delete, insert, select

from lamina.db.engine import read_tx
from lamina.db.models import cvd_layers, cvd_running_layers, devices
from lamina.errors import ConflictError, UsageError
from lamina.layers.drivers import hardware_warning
from lamina.layers.plan import DRIVER, LayerRef, Plan, PutData, make_plan
from lamina.layers.rules import RuleSet
from lamina.protocol.schemas import CvdLayersPublic, PlanItemPublic, PlanPublic
from lamina.server.security import Principal
from lamina.server.services import collections, drivers, fleet, tasks
from lamina.server.services.common import audit
from lamina.server.services.held import insert_held
from lamina.server.services.layer_versions import layer_ref, resolve, rules_of
from lamina.server.services.rows import Cvd
from lamina.store import blob
from lamina.store.blob import BlobKind
from lamina.store.repository import Store
from lamina.tree.paths import build_tree


def disk_free(c: Connection, device_id: str | None) -> int | None:
    if not device_id:
        return None
    d = c.execute(select(devices).where(devices.c.id == device_id)).first()
    if d is None:
        return None
    free = (d.agent_state or {}).get("disk_free") or (d.facts or {}).get("disk_free")
    return int(free) if isinstance(free, int) else None


@dataclass
class _Target:
    cvd: Cvd
    new_ids: list[str]
    labels: list[str]
    new: list[LayerRef]
    old: list[LayerRef]
    disk_free: int | None
    rules: RuleSet
    remove_unowned: bool = False
    #: the driver packs the device's hardware gets (after the layers in ``new``)
    packs: list[LayerRef] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _target(c: Connection, cvd: Cvd, new_ids: list[str], old_ids: list[str] | None) -> _Target:
    if old_ids is None:
        old_ids = _version_ids(c, cvd_running_layers, cvd.id)
    new = [layer_ref(c, v) for v in new_ids]
    facts = drivers.device_facts(c, cvd.device_id) or {}
    packs = drivers.packs_for_device(c, facts, facts.get("os_release"))
    warning = hardware_warning(facts, drivers.last_device_facts(c, cvd.id, cvd.device_id), packs)
    return _Target(
        cvd,
        new_ids,
        [r.label for r in new],
        new + packs,
        [layer_ref(c, v) for v in old_ids],
        disk_free(c, cvd.device_id),
        rules_of(c, cvd),
        packs=packs,
        warnings=[warning] if warning else [],
    )


def _plan(store: Store, t: _Target, put_data: PutData) -> Plan:
    snaps = store.catalog.snapshots(fleet.cvd_source(t.cvd.id))
    if not snaps:
        raise ConflictError(
            f"CVD {t.cvd.name} has no snapshot yet: the plan is computed from its last one"
        )
    return make_plan(
        store.get,
        put_data,
        snaps[-1].root,
        t.old,
        t.new,
        t.rules,
        t.disk_free,
        remove_unowned=t.remove_unowned,
    )


def _plan_public(
    t: _Target,
    plan: Plan,
    status: Literal["assigned", "dry-run", "refused"],
    task: str | None = None,
) -> PlanPublic:
    return PlanPublic(
        id=t.cvd.id,
        cvd=t.cvd.name,
        status=status,
        layers=t.labels,
        packs=[p.label for p in t.packs],
        warnings=t.warnings,
        task=task,
        counts=plan.counts(),
        download_bytes=plan.download_bytes,
        space_needed=plan.space_needed,
        refused=plan.refused,
        items=[PlanItemPublic.model_validate(i.public()) for i in plan.items],
    )


def _deliver(
    engine: Engine, store: Store, actor: str, t: _Target, action: str, dry_run: bool
) -> PlanPublic:
    """Plan; unless a dry run or refused: store the delta, then record the assignment and queue it."""
    if dry_run:
        plan = _plan(store, t, lambda d: blob.blob_id(store.keys.chunking.id_key, d))
        return _plan_public(t, plan, "dry-run")
    with (
        store.writer() as w
    ):  # merged files and the delta tree are stored before any row names them
        plan = _plan(store, t, lambda d: w.put(BlobKind.DATA, d))
        if plan.refused:
            return _plan_public(t, plan, "refused")
        delta = build_tree(w.put, plan.writes, plan.dirs)
    return insert_held(
        engine,
        store,
        w.epoch,
        [delta],
        lambda c: _assign(c, actor, t, action, plan, delta),
        "the layer delivery",
    )


def _assign(
    c: Connection, actor: str, t: _Target, action: str, plan: Plan, delta: bytes
) -> PlanPublic:
    """The assignment's rows and its delivery's task, naming ``delta`` (``insert_held``)."""
    c.execute(delete(cvd_layers).where(cvd_layers.c.cvd_id == t.cvd.id))
    for pos, vid in enumerate(t.new_ids):
        c.execute(insert(cvd_layers).values(cvd_id=t.cvd.id, position=pos, version_id=vid))
    tid = tasks.enqueue(
        c,
        "layer-apply",
        actor,
        cvd_id=t.cvd.id,
        device_id=t.cvd.device_id,
        params={
            "delta": delta.hex(),
            "removes": plan.removes,
            "expect": plan.expect,
            "dpkg_base": [c.hex() if isinstance(c, bytes) else c for c in plan.dpkg_base]
            if plan.dpkg_base is not None
            else None,
            "never_override": list(t.rules.layers.never_override),
            # what the endpoint runs once applied: the layers, then the driver packs
            "versions": t.new_ids + [p.version_id for p in t.packs],
            "labels": t.labels + [p.label for p in t.packs],
        },
    )
    audit(
        c,
        actor,
        action,
        t.cvd.id,
        layers=t.labels,
        packs=[p.label for p in t.packs],
        task=tid,
        counts=plan.counts(),
    )
    return _plan_public(t, plan, "assigned", tid)


def assign(
    engine: Engine,
    store: Store,
    actor: Principal,
    cvd_refs: list[str],
    base: str | None,
    apps: list[str],
    dry_run: bool,
    collection: str | None = None,
) -> list[PlanPublic]:
    """Assign ``base`` and ``apps`` to the CVDs ``cvd_refs`` and the members of
    ``collection``: a task each, or with ``dry_run`` only the plans."""
    actor.require("layer.write")  # before saying whether the collection exists
    cvd_refs = list(cvd_refs)
    if collection:
        members = collections.cvd_refs(engine, collection)
        if not members:
            raise UsageError(f"collection {collection} has no members")
        cvd_refs += [m for m in members if m not in cvd_refs]
    if not cvd_refs:
        raise UsageError("name at least one CVD or a collection")
    targets = []
    with read_tx(engine) as c:
        rows = ([resolve(c, base)] if base else []) + [resolve(c, a) for a in apps]
        if base and rows[0][1].kind != "base":
            raise UsageError(f"{base} is a {rows[0][1].kind} layer, not a base layer")
        for _v, layer in rows[1 if base else 0 :]:
            if layer.kind == DRIVER:
                raise UsageError(
                    f"{layer.name} is a driver pack: driver profiles choose where packs go"
                )
            if layer.kind != "app":
                raise UsageError(f"{layer.name} is a base layer: assign it with --base")
        new_ids = [v.id for v, _ in rows]
        for ref in cvd_refs:
            cvd = fleet.find_cvd(c, ref)
            if cvd.state != fleet.ACTIVE or not cvd.device_id:
                raise ConflictError(f"CVD {cvd.name} is {cvd.state}")
            targets.append(_target(c, cvd, new_ids, None))
    return [_deliver(engine, store, actor.name, t, "layer.assign", dry_run) for t in targets]


def enforce(
    engine: Engine, store: Store, actor: Principal, ref: str, remove_user_apps: bool = False
) -> PlanPublic:
    """Bring an endpoint back to its assigned layers: every layer file as the layer has it."""
    actor.require("layer.write")
    with read_tx(engine) as c:
        cvd = fleet.find_cvd(c, ref)
        ids = _version_ids(c, cvd_layers, cvd.id)
        if not ids:
            raise ConflictError(f"CVD {cvd.name} has no layers assigned")
        t = _target(c, cvd, ids, old_ids=[])
        t.remove_unowned = remove_user_apps
    return _deliver(engine, store, actor.name, t, "layer.enforce", dry_run=False)


def show_cvd_layers(engine: Engine, actor: Principal, ref: str) -> CvdLayersPublic:
    """The layers the CVD ``ref`` is assigned and those its endpoint runs."""
    cvd = fleet.cvd_for_access(engine, actor, ref)
    return CvdLayersPublic(id=cvd.id, **cvd_layer_state(engine, cvd.id))


def cvd_layer_state(engine: Engine, cvd_id: str) -> dict[str, list[str]]:
    """The labels (``NAME:VERSION``) of the layers a CVD is assigned and of those it runs."""
    with read_tx(engine) as c:
        return {
            which: [layer_ref(c, v).label for v in _version_ids(c, table, cvd_id)]
            for which, table in (("assigned", cvd_layers), ("running", cvd_running_layers))
        }


def _version_ids(c: Connection, table: Table, cvd_id: str) -> list[str]:
    """The layer version ids of a CVD in ``cvd_layers`` (assigned) or ``cvd_running_layers``
    (what its endpoint runs), in their order."""
    return list(
        c.execute(
            select(table.c.version_id).where(table.c.cvd_id == cvd_id).order_by(table.c.position)
        ).scalars()
    )
