"""A base layer captured from a reference CVD's last snapshot, and the rule-set preview
(what a rule set keeps in, and drops from, a layer captured now)."""

from __future__ import annotations

from sqlalchemy import Engine

from lamina.db.engine import read_tx
from lamina.errors import ConflictError
from lamina.layers.capture import capture_base
from lamina.layers.rules import parse_rules
from lamina.protocol.schemas import HardwareBoundPublic, LayerPublic, RulesTestPublic
from lamina.server.security import Principal
from lamina.server.services import fleet
from lamina.server.services.held import insert_held
from lamina.server.services.layer_versions import (
    new_version,
    reference_cvd,
    rules_of,
)
from lamina.store.repository import Store
from lamina.tree.paths import walk


def capture(
    engine: Engine,
    store: Store,
    actor: Principal,
    cvd_ref: str,
    name: str | None,
    update_ref: str | None,
    notes: str,
) -> LayerPublic:
    actor.require("layer.write")
    with read_tx(engine) as c:
        cvd = reference_cvd(c, cvd_ref)
        rules = rules_of(c, cvd)
    snaps = store.catalog.snapshots(fleet.cvd_source(cvd.id))
    if not snaps:
        raise ConflictError(f"reference CVD {cvd.name} has no snapshot yet")
    snap = snaps[-1]
    with store.writer() as w:
        cap = capture_base(store.get, w.put, snap.root, rules)
    return insert_held(
        engine,
        store,
        w.epoch,
        [cap.root],
        lambda c: new_version(c, actor.name, name, update_ref, "base", cap, cvd.id, snap.id, notes),
        "the layer",
    )


def test_rules(
    engine: Engine, store: Store, actor: Principal, ref: str, rules_json: str | None
) -> RulesTestPublic:
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
    return RulesTestPublic(
        id=cvd.id,
        cvd=cvd.name,
        snapshot=snaps[-1].id,
        rules=rules.name,
        kept=kept,
        kept_bytes=kept_bytes,
        dropped=dropped,
        dropped_by_reason=by_reason,
        examples=examples,
        hardware_bound=HardwareBoundPublic(
            rules=list(rules.migration.hardware_bound), count=len(bound), examples=bound[:20]
        ),
    )
