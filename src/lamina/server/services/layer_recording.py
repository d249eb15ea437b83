"""Recording an app layer on a reference endpoint: start (a first snapshot), finalize
(a second one); the layer is what changed between them.

States of a recording row: ``starting`` (waiting for the start snapshot),
``recording`` (software is being installed), ``finalizing`` (waiting for the end
snapshot). The commit of each snapshot moves them on (:func:`note_commit`, inside the
commit's transaction) and the end one is captured after it (:func:`finish_recording`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, insert, select, update

from lamina.db.engine import write_tx
from lamina.db.models import cvd_running_layers, cvds, layer_versions, layers, recordings
from lamina.errors import ConflictError, NotFoundError, UsageError
from lamina.layers.capture import capture_app
from lamina.layers.rules import RuleSet
from lamina.protocol.schemas import RecordingPublic
from lamina.server.security import Principal
from lamina.server.services import tasks
from lamina.server.services.common import audit, find_one, now
from lamina.server.services.held import insert_held
from lamina.server.services.layer_versions import (
    new_version,
    reference_cvd,
    rules_of,
)
from lamina.server.services.rows import Cvd, Recording
from lamina.store.catalog import SnapshotRecord
from lamina.store.repository import Store

log = logging.getLogger(__name__)

RECORD_STARTING, RECORDING, FINALIZING = "starting", "recording", "finalizing"


def _snapshot_now(c: Connection, actor: Principal, cvd: Cvd, why: str) -> str:
    """Queue a sync of the recording's endpoint: its snapshot moves the recording on."""
    return tasks.enqueue(
        c, "sync", actor.name, cvd_id=cvd.id, device_id=cvd.device_id, params={"why": why}
    )


def record_start(engine: Engine, actor: Principal, ref: str) -> RecordingPublic:
    actor.require("layer.write")
    with write_tx(engine) as c:
        cvd = reference_cvd(c, ref)
        if c.execute(select(recordings).where(recordings.c.cvd_id == cvd.id)).first():
            raise ConflictError(f"{cvd.name} is recording already: finalize it first")
        c.execute(
            insert(recordings).values(cvd_id=cvd.id, state=RECORD_STARTING, notes="", started=now())
        )
        tid = _snapshot_now(c, actor, cvd, "record start")
        audit(c, actor.name, "layer.record_start", cvd.id, task=tid)
    return RecordingPublic(id=cvd.id, cvd=cvd.name, state=RECORD_STARTING, task=tid)


def record_cancel(engine: Engine, actor: Principal, ref: str) -> RecordingPublic:
    """Stop a recording without capturing anything: its start snapshot is the policy's
    again (``pinned_snapshots``), and a new recording may start."""
    actor.require("layer.write")
    with write_tx(engine) as c:
        cvd = reference_cvd(c, ref)
        rec = c.execute(select(recordings).where(recordings.c.cvd_id == cvd.id)).first()
        if rec is None:
            raise ConflictError(f"{cvd.name} is not recording")
        c.execute(delete(recordings).where(recordings.c.cvd_id == cvd.id))
        audit(c, actor.name, "layer.record_cancel", cvd.id, state=rec.state)
    return RecordingPublic(id=cvd.id, cvd=cvd.name, state="cancelled", task="")


def record_finalize(
    engine: Engine, actor: Principal, ref: str, name: str | None, update_ref: str | None, notes: str
) -> RecordingPublic:
    actor.require("layer.write")
    with write_tx(engine) as c:
        cvd = reference_cvd(c, ref)
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
        tid = _snapshot_now(c, actor, cvd, "record finalize")
        audit(
            c, actor.name, "layer.record_finalize", cvd.id, task=tid, name=name, update=update_ref
        )
    return RecordingPublic(id=cvd.id, cvd=cvd.name, state=FINALIZING, task=tid)


@dataclass
class _Finalize:
    """A recording whose end snapshot just arrived: its app layer is captured next."""

    rec: Recording
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
    try:
        start = store.catalog.find_snapshot(rec.start_snapshot)
    except NotFoundError:
        # Forgotten before its start was kept for it (before session 24): the layer cannot
        # be captured, and the recording ends here, not every commit of its CVD after.
        log.warning(
            "recording %s of CVD %s dropped: its start snapshot %s is gone; record again",
            rec.name,
            cvd_id,
            rec.start_snapshot,
        )
        c.execute(delete(recordings).where(recordings.c.cvd_id == cvd_id))
        return None
    rules = rules_of(c, c.execute(select(cvds).where(cvds.c.id == cvd_id)).one())
    return _Finalize(rec, start, snap, rules)


def pinned_snapshots(c: Connection, cvd_id: str) -> frozenset[str]:
    """The CVD's snapshots its retention must not forget: a recording's start (its app
    layer is the difference from it, read when the recording is finalized; forgotten by
    a policy that keeps few snapshots, and collected, it failed the recording)."""
    start = c.execute(
        select(recordings.c.start_snapshot).where(recordings.c.cvd_id == cvd_id)
    ).scalar()
    return frozenset([start]) if start else frozenset()


def finish_recording(engine: Engine, store: Store, job: _Finalize | None) -> None:
    """Capture a finished recording's app layer: its blobs first, then its rows."""
    if job is None:
        return
    with store.writer() as w:
        cap = capture_app(store.get, w.put, job.start.root, job.end.root, job.rules)
    rec = job.rec

    def record(c: Connection) -> None:
        new_version(
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

    insert_held(engine, store, w.epoch, [cap.root], record, "the app layer")
