"""The driver library on the server: packs (layers of kind ``driver``) and profiles.

Matching is pure (``lamina.layers.drivers``); unpacking an upload is pure over the
store's ``put`` (``lamina.layers.packs``). This module reads and writes the rows
around them, and gives the layer plan its driver inputs (:func:`packs_for_device`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import IO

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import (
    cvd_layers,
    cvd_running_layers,
    devices,
    driver_profiles,
    layer_versions,
    layers,
    snapshots,
)
from lamina.errors import ConflictError, NotFoundError
from lamina.layers.drivers import Match, PackRef, Profile, os_family_of, packs_for
from lamina.layers.packs import BuiltPack, build_pack
from lamina.layers.plan import DRIVER, LayerRef
from lamina.protocol.layers import DriverProfilePublic
from lamina.protocol.schemas import DriverPackPublic, DriverPackVersionPublic
from lamina.server.security import Principal
from lamina.server.services import drivers_index
from lamina.server.services.common import audit, aware, find_one, new_id, now
from lamina.server.services.fleet import cvd_source
from lamina.server.services.held import insert_held
from lamina.server.services.layer_versions import (
    add_version,
    version_public,
    with_versions,
)
from lamina.server.services.rows import DriverProfile, JsonObject, Layer, LayerVersion
from lamina.store.chunker import Chunker
from lamina.store.repository import Store

#: Devices a profile test looks at: those that may still receive a system.
_LIVE = ("pending", "active")


def device_facts(c: Connection, device_id: str | None) -> JsonObject | None:
    """A device's reported facts (``None``: no such device, or none reported)."""
    if not device_id:
        return None
    d = c.execute(select(devices.c.facts).where(devices.c.id == device_id)).first()
    return d.facts if d is not None and isinstance(d.facts, dict) else None


def last_device_facts(c: Connection, cvd_id: str, device_id: str | None) -> JsonObject | None:
    """The facts of the machine a CVD's system last ran on: the device its last snapshot
    was taken on (snapshot ``meta.device``), else ``device_id`` (its device now). A
    machine it was migrated onto but that never synced (a rolled-back migration) is
    not where it last ran."""
    meta = c.execute(
        select(snapshots.c.meta)
        .where(snapshots.c.source == cvd_source(cvd_id))
        .order_by(snapshots.c.seq.desc())
        .limit(1)
    ).scalar()
    last = meta.get("device") if isinstance(meta, dict) else None
    return device_facts(c, last if isinstance(last, str) and last else device_id)


# --- packs ------------------------------------------------------------------------------
def _version_public(r: LayerVersion) -> DriverPackVersionPublic:
    """A layer version's view, less what a pack has not (whiteouts, a source CVD), with
    the packages it carries in place of its ``apps``."""
    apps = r.apps or {}
    return DriverPackVersionPublic(
        **version_public(r).model_dump(include=set(DriverPackVersionPublic.model_fields)),
        packages=apps.get("packages", {}),
        loose_files=apps.get("loose_files", 0),
    )


def _packs_public(c: Connection, rows: Iterable[Layer]) -> list[DriverPackPublic]:
    """Packs with their versions (``with_versions``: one query for all their versions)."""
    return [
        DriverPackPublic(
            id=r.id,
            name=r.name,
            created=aware(r.created),
            versions=[_version_public(v) for v in versions],
        )
        for r, versions in with_versions(c, rows)
    ]


def _pack_public(c: Connection, r: Layer) -> DriverPackPublic:
    return _packs_public(c, [r])[0]


def _find_pack(c: Connection, ref: str) -> Layer:
    r: Layer = find_one(c, layers, ref, "name", "driver pack")
    if r.kind != DRIVER:
        raise NotFoundError(f"{r.name} is a {r.kind} layer, not a driver pack")
    return r


def list_packs(engine: Engine, actor: Principal) -> list[DriverPackPublic]:
    actor.require("read")
    with read_tx(engine) as c:
        rows = c.execute(select(layers).where(layers.c.kind == DRIVER).order_by(layers.c.name))
        return _packs_public(c, rows)


def show_pack(engine: Engine, actor: Principal, ref: str) -> DriverPackPublic:
    actor.require("read")
    with read_tx(engine) as c:
        return _pack_public(c, _find_pack(c, ref))


def import_pack(
    engine: Engine, store: Store, actor: Principal, name: str, archive: IO[bytes], notes: str
) -> DriverPackPublic:
    """A new version of pack ``name`` (made if new) from an uploaded tar of its folder.

    The tree and its chunks are stored before the row that names them."""
    actor.require("driver.write")
    PackRef.parse(name)  # the name's rules
    with read_tx(engine) as c:
        r = c.execute(select(layers).where(layers.c.name == name)).first()
        if r is not None and r.kind != DRIVER:
            raise ConflictError(f"{name!r} is the name of a {r.kind} layer: pick another name")
    chunker = Chunker(store.keys.chunking)
    with store.writer() as w:
        built = build_pack(archive, w.put, chunker.cut)
    return insert_held(
        engine,
        store,
        w.epoch,
        [built.root],
        lambda c: _add_pack(c, actor, name, built, notes),
        "the driver pack",
    )


def _add_pack(
    c: Connection, actor: Principal, name: str, built: BuiltPack, notes: str
) -> DriverPackPublic:
    """The rows of a pack's new version (its tree stored already)."""
    r = c.execute(select(layers).where(layers.c.name == name)).first()
    if r is None:
        lid = new_id()
        c.execute(insert(layers).values(id=lid, name=name, kind=DRIVER, created=now()))
        r = c.execute(select(layers).where(layers.c.id == lid)).one()
    elif r.kind != DRIVER:
        raise ConflictError(f"{name!r} is the name of a {r.kind} layer: pick another name")
    version = add_version(c, r.id, built, notes)
    audit(
        c,
        actor.name,
        "driver.import",
        f"{name}:{version}",
        files=built.files,
        packages=sorted(built.packages),
    )
    return _pack_public(c, r)


def delete_pack(engine: Engine, actor: Principal, ref: str) -> DriverPackPublic:
    """Delete a pack and its versions; refused while a profile names it or an endpoint
    is assigned or runs one of its versions."""
    actor.require("driver.write")
    with write_tx(engine) as c:
        r = _find_pack(c, ref)
        users = [p.name for p in c.execute(select(driver_profiles)) if r.name in _pack_names(p)]
        if users:
            raise ConflictError(
                f"driver pack {r.name} is named by profile(s) {', '.join(sorted(users))}: "
                "update or delete them first"
            )
        ids = list(
            c.execute(
                select(layer_versions.c.id).where(layer_versions.c.layer_id == r.id)
            ).scalars()
        )
        running = c.execute(
            select(func.count())
            .select_from(cvd_running_layers)
            .where(cvd_running_layers.c.version_id.in_(ids))
        ).scalar()
        assigned = c.execute(
            select(func.count()).select_from(cvd_layers).where(cvd_layers.c.version_id.in_(ids))
        ).scalar()
        if running or assigned:
            raise ConflictError(
                f"driver pack {r.name} runs on {running or assigned} endpoint(s): "
                "it stays while they run it"
            )
        doc = _pack_public(c, r)
        c.execute(delete(layer_versions).where(layer_versions.c.layer_id == r.id))
        c.execute(delete(layers).where(layers.c.id == r.id))
        audit(c, actor.name, "driver.delete", r.name, versions=len(ids))
        return doc


# --- profiles ---------------------------------------------------------------------------
def _pack_names(row: DriverProfile) -> set[str]:
    return {str(p.get("name")) for p in row.packs or [] if isinstance(p, dict)}


def _profile_of(row: DriverProfile) -> Profile:
    return Profile(
        row.name,
        tuple(PackRef(str(p["name"]), p.get("version")) for p in row.packs),
        tuple(Match.parse(m) for m in row.matches),
        row.os_family,
    )


def _profile_public(row: DriverProfile) -> DriverProfilePublic:
    p = _profile_of(row)
    return DriverProfilePublic(
        id=row.id,
        name=row.name,
        packs=[r.label for r in p.packs],
        matches=[str(m) for m in p.matches],
        os_family=row.os_family,
        notes=row.notes,
        created=aware(row.created),
        updated=aware(row.updated),
    )


def _checked(
    c: Connection, name: str, packs: list[str], matches: list[str], os_family: str | None
) -> Profile:
    """The profile these arguments make; every pack (and version) must exist."""
    p = Profile(
        name,
        tuple(PackRef.parse(s) for s in packs),
        tuple(Match.parse(m) for m in matches),
        os_family.strip().lower() if os_family else None,
    )
    for ref in p.packs:
        pack = c.execute(select(layers).where(layers.c.name == ref.name)).first()
        if pack is None or pack.kind != DRIVER:
            raise NotFoundError(
                f"no driver pack {ref.name!r}: import it with `lamina driver import`"
            )
        if (
            ref.version is not None
            and not c.execute(
                select(layer_versions.c.id).where(
                    layer_versions.c.layer_id == pack.id, layer_versions.c.version == ref.version
                )
            ).first()
        ):
            raise NotFoundError(f"driver pack {ref.name} has no version {ref.version}")
    return p


def _values(p: Profile) -> dict[str, object]:
    return {
        "packs": [{"name": r.name, "version": r.version} for r in p.packs],
        "matches": [str(m) for m in p.matches],
        "os_family": p.os_family,
    }


def create_profile(
    engine: Engine,
    actor: Principal,
    name: str,
    packs: list[str],
    matches: list[str],
    os_family: str | None,
    notes: str = "",
) -> DriverProfilePublic:
    actor.require("driver.write")
    with write_tx(engine) as c:
        if c.execute(select(driver_profiles.c.id).where(driver_profiles.c.name == name)).first():
            raise ConflictError(f"driver profile {name!r} exists already: use `profile update`")
        p = _checked(c, name, packs, matches, os_family)
        pid = new_id()
        c.execute(
            insert(driver_profiles).values(
                id=pid, name=name, notes=notes, created=now(), updated=now(), **_values(p)
            )
        )
        audit(c, actor.name, "driver.profile_create", name, **_values(p))
        return _profile_public(
            c.execute(select(driver_profiles).where(driver_profiles.c.id == pid)).one()
        )


def update_profile(
    engine: Engine,
    actor: Principal,
    ref: str,
    packs: list[str] | None,
    matches: list[str] | None,
    os_family: str | None,
    notes: str | None = None,
) -> DriverProfilePublic:
    """Replace what is given: the packs, the matches, the OS family (``""`` clears it)."""
    actor.require("driver.write")
    with write_tx(engine) as c:
        row = find_one(c, driver_profiles, ref, "name", "driver profile")
        old = _profile_of(row)
        p = _checked(
            c,
            row.name,
            packs if packs is not None else [r.label for r in old.packs],
            matches if matches is not None else [str(m) for m in old.matches],
            old.os_family if os_family is None else os_family,
        )
        values = _values(p)
        if notes is not None:
            values["notes"] = notes
        c.execute(
            update(driver_profiles)
            .where(driver_profiles.c.id == row.id)
            .values(updated=now(), **values)
        )
        audit(c, actor.name, "driver.profile_update", row.name, **_values(p))
        return _profile_public(
            c.execute(select(driver_profiles).where(driver_profiles.c.id == row.id)).one()
        )


def list_profiles(engine: Engine, actor: Principal) -> list[DriverProfilePublic]:
    actor.require("read")
    with read_tx(engine) as c:
        rows = c.execute(select(driver_profiles).order_by(driver_profiles.c.name))
        return [_profile_public(r) for r in rows]


def show_profile(engine: Engine, actor: Principal, ref: str) -> DriverProfilePublic:
    actor.require("read")
    with read_tx(engine) as c:
        return _profile_public(find_one(c, driver_profiles, ref, "name", "driver profile"))


def delete_profile(engine: Engine, actor: Principal, ref: str) -> DriverProfilePublic:
    actor.require("driver.write")
    with write_tx(engine) as c:
        row = find_one(c, driver_profiles, ref, "name", "driver profile")
        c.execute(delete(driver_profiles).where(driver_profiles.c.id == row.id))
        audit(c, actor.name, "driver.profile_delete", row.name)
        return _profile_public(row)


def test_profile(engine: Engine, actor: Principal, ref: str) -> list[dict[str, str]]:
    """The devices (pending or active) this profile matches today, by their reported facts
    and OS, in hostname order: answered from ``device_match_facts`` (one query), not
    from each device's facts (``drivers_index``)."""
    actor.require("read")
    drivers_index.fill(engine)
    with read_tx(engine) as c:
        p = _profile_of(find_one(c, driver_profiles, ref, "name", "driver profile"))
        return drivers_index.matching(c, p, _LIVE)


# --- what the layer plan gets -----------------------------------------------------------
def profiles(c: Connection) -> list[Profile]:
    return [_profile_of(r) for r in c.execute(select(driver_profiles))]


def packs_for_device(
    c: Connection, facts: JsonObject, os_release: Mapping[str, str] | None
) -> list[LayerRef]:
    """The driver packs a machine with ``facts`` gets when a system with ``os_release``
    is laid down on it, as layer-plan inputs (kind ``driver``; latest version unless a
    profile pins one). Append them after the app layers; their ``LayerRef.label`` is
    ``NAME:VERSION``. A profile naming a pack deleted since is an error, not a skip."""
    refs = packs_for(facts, os_family_of(os_release), profiles(c))
    out = []
    for ref in refs:
        pack = c.execute(
            select(layers).where(layers.c.name == ref.name, layers.c.kind == DRIVER)
        ).first()
        if pack is None:
            raise NotFoundError(f"a driver profile names the missing pack {ref.name!r}")
        q = select(layer_versions).where(layer_versions.c.layer_id == pack.id)
        if ref.version is not None:
            q = q.where(layer_versions.c.version == ref.version)
        v = c.execute(q.order_by(layer_versions.c.version.desc()).limit(1)).first()
        if v is None:
            raise NotFoundError(f"driver pack {ref.name} has no version {ref.version or '(any)'}")
        out.append(pack_ref(pack, v))
    return out


def pack_refs(c: Connection, version_ids: list[str]) -> list[LayerRef]:
    """Stored pack versions (ids, e.g. kept in a task's params since a dry run) as
    layer-plan inputs, in the order given; an id that is not a pack version is an error."""
    out = []
    for vid in version_ids:
        v = c.execute(select(layer_versions).where(layer_versions.c.id == vid)).first()
        pack = c.execute(select(layers).where(layers.c.id == v.layer_id)).first() if v else None
        if v is None or pack is None or pack.kind != DRIVER:
            raise NotFoundError(f"no driver pack version {vid!r}")
        out.append(pack_ref(pack, v))
    return out


def pack_ref(pack: Layer, version: LayerVersion) -> LayerRef:
    """A stored pack version as a layer-plan input."""
    return LayerRef(
        f"{pack.name}:{version.version}",
        DRIVER,
        bytes(version.root),
        (),
        tuple((version.apps or {}).get("packages", {})),
        version_id=version.id,
    )
