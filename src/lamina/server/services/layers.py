"""Layers on the server: capture, record, list, assign with a dry run, enforce.

The computation lives in ``lamina.layers`` (pure, over trees); this module reads
and writes the rows and the store around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import (
    cvd_layers,
    cvd_running_layers,
    cvds,
    devices,
    layer_versions,
    layers,
    recordings,
)
from lamina.errors import ConflictError, NotFoundError, UsageError
from lamina.layers.capture import Captured, capture_app, capture_base
from lamina.layers.drivers import hardware_warning
from lamina.layers.plan import DRIVER, LayerRef, Plan, make_plan
from lamina.layers.rules import RuleSet, for_os, parse_rules
from lamina.server.security import Principal
from lamina.server.services import drivers, fleet, tasks
from lamina.server.services.common import audit, aware, find_one, new_id, now
from lamina.store import blob
from lamina.store.blob import BlobKind
from lamina.store.catalog import SnapshotRecord
from lamina.store.repository import Store
from lamina.tree.paths import build_tree, walk

RECORD_STARTING, RECORDING, FINALIZING = "starting", "recording", "finalizing"


# --- reading ------------------------------------------------------------------------
def _version_public(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "version": r.version,
        "created": aware(r.created),
        "root": r.root.hex(),
        "whiteouts": r.whiteouts,
        "source_cvd": r.source_cvd,
        "source_snapshot": r.source_snapshot,
        "notes": r.notes,
        "files": r.files,
        "bytes": r.bytes,
        "apps": r.apps,
    }


def _layer_public(c: Connection, r: Any) -> dict[str, Any]:
    vs = c.execute(
        select(layer_versions)
        .where(layer_versions.c.layer_id == r.id)
        .order_by(layer_versions.c.version)
    ).all()
    return {
        "id": r.id,
        "name": r.name,
        "kind": r.kind,
        "created": aware(r.created),
        "versions": [_version_public(v) for v in vs],
    }


def list_layers(engine: Engine, actor: Principal) -> list[dict[str, Any]]:
    """Base and app layers (driver packs are listed by ``lamina driver list``)."""
    actor.require("read")
    with read_tx(engine) as c:
        q = select(layers).where(layers.c.kind != DRIVER).order_by(layers.c.name)
        return [_layer_public(c, r) for r in c.execute(q)]


def show_layer(engine: Engine, actor: Principal, ref: str) -> dict[str, Any]:
    actor.require("read")
    with read_tx(engine) as c:
        return _layer_public(c, find_one(c, layers, ref, "name", "layer"))


def _resolve(c: Connection, spec: str) -> Any:
    """``NAME[:VERSION]`` (or id) -> the layer version row (latest by default)."""
    name, _, ver = spec.partition(":")
    layer = find_one(c, layers, name, "name", "layer")
    q = select(layer_versions).where(layer_versions.c.layer_id == layer.id)
    if ver:
        if not ver.isdigit():
            raise UsageError(f"layer version in {spec!r} must be a number")
        q = q.where(layer_versions.c.version == int(ver))
    row = c.execute(q.order_by(layer_versions.c.version.desc()).limit(1)).first()
    if row is None:
        raise NotFoundError(f"no version {ver or '(any)'} of layer {layer.name}")
    return row, layer


def _ref(c: Connection, version_id: str) -> LayerRef:
    v = c.execute(select(layer_versions).where(layer_versions.c.id == version_id)).one()
    layer = c.execute(select(layers).where(layers.c.id == v.layer_id)).one()
    packages = tuple((v.apps or {}).get("packages", {})) if layer.kind != "base" else None
    return LayerRef(
        f"{layer.name}:{v.version}",
        layer.kind,
        bytes(v.root),
        tuple(v.whiteouts),
        packages,
        version_id=v.id,
    )


# --- creating versions ---------------------------------------------------------------
def _new_version(
    c: Connection,
    actor: str,
    name: str | None,
    update_ref: str | None,
    kind: str,
    cap: Captured,
    cvd_id: str,
    snapshot: str,
    notes: str,
) -> dict[str, Any]:
    if update_ref:
        layer = find_one(c, layers, update_ref, "name", "layer")
        if layer.kind != kind:
            raise ConflictError(f"layer {layer.name} is a {layer.kind} layer, not {kind}")
    else:
        if not name:
            raise UsageError("give --name for a new layer, or --update LAYER for a new version")
        if c.execute(select(layers.c.id).where(layers.c.name == name)).first():
            raise ConflictError(f"layer {name!r} exists already: use --update {name}")
        lid = new_id()
        c.execute(insert(layers).values(id=lid, name=name, kind=kind, created=now()))
        layer = c.execute(select(layers).where(layers.c.id == lid)).one()
    version = (
        c.execute(
            select(func.max(layer_versions.c.version)).where(layer_versions.c.layer_id == layer.id)
        ).scalar()
        or 0
    ) + 1
    vid = new_id()
    c.execute(
        insert(layer_versions).values(
            id=vid,
            layer_id=layer.id,
            version=version,
            created=now(),
            root=cap.root,
            whiteouts=cap.whiteouts,
            source_cvd=cvd_id,
            source_snapshot=snapshot,
            notes=notes,
            files=cap.files,
            bytes=cap.bytes,
            apps=cap.apps,
        )
    )
    audit(
        c,
        actor,
        "layer.capture",
        f"{layer.name}:{version}",
        kind=kind,
        files=cap.files,
        whiteouts=len(cap.whiteouts),
    )
    return _layer_public(c, layer)


def rules_of(c: Connection, cvd: Any) -> RuleSet:
    """The built-in rule set for the OS the CVD's device reported."""
    d = (
        c.execute(select(devices).where(devices.c.id == cvd.device_id)).first()
        if cvd.device_id
        else None
    )
    return for_os(((d.facts or {}).get("os_release") if d else None) or {})


def _reference_cvd(c: Connection, ref: str) -> Any:
    try:
        cvd = fleet.find_cvd(c, ref)
    except NotFoundError:
        d = fleet.find_device(c, ref)
        cvd = c.execute(
            select(cvds).where(cvds.c.device_id == d.id, cvds.c.state == fleet.ACTIVE)
        ).first()
        if cvd is None:
            raise NotFoundError(f"device {d.hostname} has no active CVD") from None
    if not cvd.reference:
        raise ConflictError(
            f"CVD {cvd.name} is not a reference CVD: centralize it with --reference"
        )
    return cvd


def capture(
    engine: Engine,
    store: Store,
    actor: Principal,
    cvd_ref: str,
    name: str | None,
    update_ref: str | None,
    notes: str,
) -> dict[str, Any]:
    actor.require("layer.write")
    with read_tx(engine) as c:
        cvd = _reference_cvd(c, cvd_ref)
        rules = rules_of(c, cvd)
    snaps = store.catalog.snapshots(fleet.cvd_source(cvd.id))
    if not snaps:
        raise ConflictError(f"reference CVD {cvd.name} has no snapshot yet")
    snap = snaps[-1]
    with store.writer() as w:
        cap = capture_base(store.get, w.put, snap.root, rules)
    with write_tx(engine) as c:
        return _new_version(c, actor.name, name, update_ref, "base", cap, cvd.id, snap.id, notes)


def record_start(engine: Engine, actor: Principal, ref: str) -> dict[str, Any]:
    actor.require("layer.write")
    with write_tx(engine) as c:
        cvd = _reference_cvd(c, ref)
        if c.execute(select(recordings).where(recordings.c.cvd_id == cvd.id)).first():
            raise ConflictError(f"{cvd.name} is recording already: finalize it first")
        c.execute(
            insert(recordings).values(cvd_id=cvd.id, state=RECORD_STARTING, notes="", started=now())
        )
        tid = tasks.enqueue(
            c,
            "sync",
            actor.name,
            cvd_id=cvd.id,
            device_id=cvd.device_id,
            params={"why": "record start"},
        )
        audit(c, actor.name, "layer.record_start", cvd.id, task=tid)
    return {"id": cvd.id, "cvd": cvd.name, "state": RECORD_STARTING, "task": tid}


def record_finalize(
    engine: Engine, actor: Principal, ref: str, name: str | None, update_ref: str | None, notes: str
) -> dict[str, Any]:
    actor.require("layer.write")
    with write_tx(engine) as c:
        cvd = _reference_cvd(c, ref)
        rec = c.execute(select(recordings).where(recordings.c.cvd_id == cvd.id)).first()
        if rec is None:
            raise ConflictError(
                f"{cvd.name} is not recording: run `lamina layer record start` first"
            )
        if rec.state != RECORDING:
            raise ConflictError(
                f"{cvd.name}'s recording is {rec.state}: wait for the agent's snapshot"
            )
        if update_ref:
            find_one(c, layers, update_ref, "name", "layer")
        elif not name or c.execute(select(layers.c.id).where(layers.c.name == name)).first():
            raise UsageError("give --name of a new layer, or --update LAYER for a new version")
        c.execute(
            update(recordings)
            .where(recordings.c.cvd_id == cvd.id)
            .values(state=FINALIZING, name=name, update_layer=update_ref, notes=notes)
        )
        tid = tasks.enqueue(
            c,
            "sync",
            actor.name,
            cvd_id=cvd.id,
            device_id=cvd.device_id,
            params={"why": "record finalize"},
        )
        audit(
            c, actor.name, "layer.record_finalize", cvd.id, task=tid, name=name, update=update_ref
        )
    return {"id": cvd.id, "cvd": cvd.name, "state": FINALIZING, "task": tid}


@dataclass
class _Finalize:
    """A recording whose end snapshot just arrived: its app layer is captured next."""

    rec: Any
    start: SnapshotRecord
    end: SnapshotRecord
    rules: RuleSet


def after_commit(engine: Engine, store: Store, cvd_id: str, snap: SnapshotRecord) -> None:
    """Hook run after each committed snapshot: recordings and the layers the endpoint runs."""
    with write_tx(engine) as c:
        job = note_commit(c, store, cvd_id, snap)
    finish_recording(engine, store, job)


def note_commit(c: Connection, store: Store, cvd_id: str, snap: SnapshotRecord) -> _Finalize | None:
    """In the commit's transaction: the layers the endpoint reports running, and a
    recording's progress. A recording that ends here is returned for
    ``finish_recording``, which captures its layer after the transaction."""
    reported = (snap.meta.get("stats") or {}).get("layers")
    if isinstance(reported, list):
        known = set(
            c.execute(
                select(layer_versions.c.id).where(
                    layer_versions.c.id.in_([str(x) for x in reported])
                )
            ).scalars()
        )
        c.execute(delete(cvd_running_layers).where(cvd_running_layers.c.cvd_id == cvd_id))
        for pos, vid in enumerate(v for v in reported if v in known):
            c.execute(
                insert(cvd_running_layers).values(cvd_id=cvd_id, position=pos, version_id=vid)
            )
    rec = c.execute(select(recordings).where(recordings.c.cvd_id == cvd_id)).first()
    if rec is None:
        return None
    if rec.state == RECORD_STARTING:
        c.execute(
            update(recordings)
            .where(recordings.c.cvd_id == cvd_id)
            .values(state=RECORDING, start_snapshot=snap.id)
        )
        return None
    if rec.state != FINALIZING:
        return None
    start = store.catalog.find_snapshot(rec.start_snapshot)
    rules = rules_of(c, c.execute(select(cvds).where(cvds.c.id == cvd_id)).one())
    return _Finalize(rec, start, snap, rules)


def finish_recording(engine: Engine, store: Store, job: _Finalize | None) -> None:
    """Capture a finished recording's app layer: its blobs first, then its rows."""
    if job is None:
        return
    with store.writer() as w:
        cap = capture_app(store.get, w.put, job.start.root, job.end.root, job.rules)
    rec = job.rec
    with write_tx(engine) as c:
        _new_version(
            c,
            "recording",
            rec.name,
            rec.update_layer,
            "app",
            cap,
            rec.cvd_id,
            job.end.id,
            rec.notes,
        )
        c.execute(delete(recordings).where(recordings.c.cvd_id == rec.cvd_id))


# --- assignment -----------------------------------------------------------------------
def _disk_free(c: Connection, device_id: str | None) -> int | None:
    if not device_id:
        return None
    d = c.execute(select(devices).where(devices.c.id == device_id)).first()
    if d is None:
        return None
    free = (d.agent_state or {}).get("disk_free") or (d.facts or {}).get("disk_free")
    return int(free) if isinstance(free, int) else None


@dataclass
class _Target:
    cvd: Any
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


def _device_facts(c: Connection, device_id: str | None) -> dict[str, Any]:
    if not device_id:
        return {}
    d = c.execute(select(devices.c.facts).where(devices.c.id == device_id)).first()
    return d.facts if d is not None and isinstance(d.facts, dict) else {}


def _target(c: Connection, cvd: Any, new_ids: list[str], old_ids: list[str] | None) -> _Target:
    if old_ids is None:
        old_ids = list(
            c.execute(
                select(cvd_running_layers.c.version_id)
                .where(cvd_running_layers.c.cvd_id == cvd.id)
                .order_by(cvd_running_layers.c.position)
            ).scalars()
        )
    new = [_ref(c, v) for v in new_ids]
    facts = _device_facts(c, cvd.device_id)
    packs = drivers.packs_for_device(c, facts, facts.get("os_release"))
    warning = hardware_warning(facts, drivers.last_device_facts(c, cvd.id, cvd.device_id), packs)
    return _Target(
        cvd,
        new_ids,
        [r.label for r in new],
        new + packs,
        [_ref(c, v) for v in old_ids],
        _disk_free(c, cvd.device_id),
        rules_of(c, cvd),
        packs=packs,
        warnings=[warning] if warning else [],
    )


def _plan(store: Store, t: _Target, put_data: Any) -> Plan:
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


def _plan_public(t: _Target, plan: Plan, status: str, task: str | None = None) -> dict[str, Any]:
    return {
        "id": t.cvd.id,
        "cvd": t.cvd.name,
        "status": status,
        "layers": t.labels,
        "packs": [p.label for p in t.packs],
        "warnings": t.warnings,
        "task": task,
        "counts": plan.counts(),
        "download_bytes": plan.download_bytes,
        "space_needed": plan.space_needed,
        "refused": plan.refused,
        "items": [i.public() for i in plan.items],
    }


def _deliver(
    engine: Engine, store: Store, actor: str, t: _Target, action: str, dry_run: bool
) -> dict[str, Any]:
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
    with write_tx(engine) as c:
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
) -> list[dict[str, Any]]:
    actor.require("layer.write")
    targets = []
    with read_tx(engine) as c:
        rows = ([_resolve(c, base)] if base else []) + [_resolve(c, a) for a in apps]
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
) -> dict[str, Any]:
    """Bring an endpoint back to its assigned layers: every layer file as the layer has it."""
    actor.require("layer.write")
    with read_tx(engine) as c:
        cvd = fleet.find_cvd(c, ref)
        ids = list(
            c.execute(
                select(cvd_layers.c.version_id)
                .where(cvd_layers.c.cvd_id == cvd.id)
                .order_by(cvd_layers.c.position)
            ).scalars()
        )
        if not ids:
            raise ConflictError(f"CVD {cvd.name} has no layers assigned")
        t = _target(c, cvd, ids, old_ids=[])
        t.remove_unowned = remove_user_apps
    return _deliver(engine, store, actor.name, t, "layer.enforce", dry_run=False)


def cvd_layer_state(engine: Engine, cvd_id: str) -> dict[str, list[str]]:
    with read_tx(engine) as c:

        def labels(table: Any) -> list[str]:
            ids = c.execute(
                select(table.c.version_id)
                .where(table.c.cvd_id == cvd_id)
                .order_by(table.c.position)
            ).scalars()
            return [_ref(c, v).label for v in ids]

        return {"assigned": labels(cvd_layers), "running": labels(cvd_running_layers)}


def test_rules(
    engine: Engine, store: Store, actor: Principal, ref: str, rules_json: str | None
) -> dict[str, Any]:
    """What a rule set would keep in, and drop from, a layer captured from this CVD now.

    A custom rule set is code the server runs on the caller's behalf: it needs
    ``layer.write`` (the built-in one needs ``read``)."""
    actor.require("layer.write" if rules_json else "read")
    with read_tx(engine) as c:
        cvd = fleet.find_cvd(c, ref)
        rules = parse_rules(rules_json) if rules_json else rules_of(c, cvd)
    snaps = store.catalog.snapshots(fleet.cvd_source(cvd.id))
    if not snaps:
        raise ConflictError(f"CVD {cvd.name} has no snapshot yet")
    kept = dropped = kept_bytes = 0
    by_reason: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    bound: list[str] = []  # what a migration keeps from the new machine (migration rules)
    for path, e in walk(store.get, snaps[-1].root):
        if e.type == "dir":
            continue
        if rules.hardware_bound(path):
            bound.append(path)
        if rules.capturable(path):
            kept += 1
            kept_bytes += e.size
            continue
        dropped += 1
        reason = (
            "do_not_capture"
            if rules.classify(path) in rules.layers.capture_classes
            else rules.classify(path)
        )
        by_reason[reason] = by_reason.get(reason, 0) + 1
        ex = examples.setdefault(reason, [])
        if len(ex) < 10:
            ex.append(path)
    return {
        "id": cvd.id,
        "cvd": cvd.name,
        "snapshot": snaps[-1].id,
        "rules": rules.name,
        "kept": kept,
        "kept_bytes": kept_bytes,
        "dropped": dropped,
        "dropped_by_reason": by_reason,
        "examples": examples,
        "hardware_bound": {
            "rules": list(rules.migration.hardware_bound),
            "count": len(bound),
            "examples": bound[:20],
        },
    }
