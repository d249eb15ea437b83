"""Layers and their versions: the rows, their public views, and the lookups the other
layer services share (``NAME[:VERSION]`` to a row, a version to the ``LayerRef`` the
planner takes, a reference CVD, the rule set of a CVD's OS).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, Engine, insert, select

from lamina.db.engine import read_tx
from lamina.db.models import devices, layer_versions, layers
from lamina.errors import ConflictError, NotFoundError, UsageError
from lamina.layers.capture import Captured
from lamina.layers.packs import BuiltPack
from lamina.layers.plan import DRIVER, LayerRef
from lamina.layers.rules import RuleSet, for_os
from lamina.protocol.schemas import LayerPublic, LayerVersionPublic
from lamina.server.security import Principal
from lamina.server.services import fleet
from lamina.server.services.common import (
    audit,
    aware,
    find_one,
    from_row,
    insert_version,
    new_id,
    now,
)
from lamina.server.services.rows import Cvd, Layer, LayerVersion


def version_public(r: LayerVersion) -> LayerVersionPublic:
    return from_row(LayerVersionPublic, r, root=r.root.hex())


def with_versions(c: Connection, rows: Iterable[Layer]) -> list[tuple[Layer, list[LayerVersion]]]:
    """Layers (or driver packs), each with every version of it, oldest first: one query
    for the versions of all of them, whatever their number."""
    rows = list(rows)
    versions: dict[str, list[LayerVersion]] = {r.id: [] for r in rows}
    if rows:
        q = (
            select(layer_versions)
            .where(layer_versions.c.layer_id.in_(list(versions)))
            .order_by(layer_versions.c.layer_id, layer_versions.c.version)
        )
        for v in c.execute(q):
            versions[v.layer_id].append(v)
    return [(r, versions[r.id]) for r in rows]


def layers_public(c: Connection, rows: Iterable[Layer]) -> list[LayerPublic]:
    """The public views of layer rows with their versions."""
    return [
        LayerPublic(
            id=r.id,
            name=r.name,
            kind=r.kind,  # type: ignore[arg-type]  # base or app: never a driver pack here
            created=aware(r.created),
            versions=[version_public(v) for v in versions],
        )
        for r, versions in with_versions(c, rows)
    ]


def list_layers(engine: Engine, actor: Principal) -> list[LayerPublic]:
    """Base and app layers (driver packs are listed by ``lamina driver list``)."""
    actor.require("read")
    with read_tx(engine) as c:
        q = select(layers).where(layers.c.kind != DRIVER).order_by(layers.c.name)
        return layers_public(c, c.execute(q))


def show_layer(engine: Engine, actor: Principal, ref: str) -> LayerPublic:
    actor.require("read")
    with read_tx(engine) as c:
        layer: Layer = find_one(c, layers, ref, "name", "layer")
        if layer.kind == DRIVER:
            raise NotFoundError(f"{layer.name} is a driver pack: see `lamina driver show`")
        return layers_public(c, [layer])[0]


def resolve(c: Connection, spec: str) -> tuple[LayerVersion, Layer]:
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


def layer_ref(c: Connection, version_id: str) -> LayerRef:
    """The planner's reference to a layer version."""
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


def new_version(
    c: Connection,
    actor: str,
    name: str | None,
    update_ref: str | None,
    kind: str,
    cap: Captured,
    cvd_id: str,
    snapshot: str,
    notes: str,
) -> LayerPublic:
    if update_ref:
        layer: Layer = find_one(c, layers, update_ref, "name", "layer")
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
    version = add_version(c, layer.id, cap, notes, source=(cvd_id, snapshot))
    audit(
        c,
        actor,
        "layer.capture",
        f"{layer.name}:{version}",
        kind=kind,
        files=cap.files,
        whiteouts=len(cap.whiteouts),
    )
    return layers_public(c, [layer])[0]


def add_version(
    c: Connection,
    layer_id: str,
    content: Captured | BuiltPack,
    notes: str,
    source: tuple[str, str] | None = None,
) -> int:
    """Record the next version of a layer (its tree stored already); returns its number.
    ``source``: the CVD and snapshot it was captured from (none for a driver pack)."""
    return insert_version(
        c,
        layer_versions,
        "layer_id",
        layer_id,
        root=content.root,
        whiteouts=content.whiteouts if isinstance(content, Captured) else [],
        source_cvd=source[0] if source else None,
        source_snapshot=source[1] if source else None,
        notes=notes,
        files=content.files,
        bytes=content.bytes,
        apps=content.apps,
    )


def rules_of(c: Connection, cvd: Cvd) -> RuleSet:
    """The built-in rule set for the OS the CVD's device reported."""
    d = (
        c.execute(select(devices).where(devices.c.id == cvd.device_id)).first()
        if cvd.device_id
        else None
    )
    return for_os(((d.facts or {}).get("os_release") if d else None) or {})


def reference_cvd(c: Connection, ref: str) -> Cvd:
    try:
        cvd = fleet.find_cvd(c, ref)
    except NotFoundError:
        d = fleet.find_device(c, ref)
        found = fleet.active_cvd(c, d.id)
        if found is None:
            raise NotFoundError(f"device {d.hostname} has no active CVD") from None
        cvd = found
    if not cvd.reference:
        raise ConflictError(
            f"CVD {cvd.name} is not a reference CVD: centralize it with --reference"
        )
    return cvd
