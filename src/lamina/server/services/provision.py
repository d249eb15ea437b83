"""A system laid down from layers: base-layer provisioning of a new machine, OS migration.

Both compose one tree on the server -- the base layer, the app layers, the driver
packs the device's profiles match, dpkg's database merged by the layer plan --
and queue one ``migrate`` task in mode ``system``: the agent makes the system
and applications classes exactly that tree (removing what the layers do not
hold), keeps identity, user data and the hardware-bound paths as they are, and
applies it at the next boot with the boot confirmation of every staged apply.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, delete, insert, select

from lamina.db.engine import read_tx
from lamina.db.models import cvd_layers, cvds, devices, layer_versions, policies
from lamina.errors import ConflictError, UsageError
from lamina.layers.overlay import overlay
from lamina.layers.plan import LayerRef, make_plan
from lamina.layers.rules import RuleSet, for_os
from lamina.protocol.migration import MigrateOsReport, ProvisionReport
from lamina.protocol.policies import PolicySettings
from lamina.protocol.tasks import MigrateParams
from lamina.server.security import Principal
from lamina.server.services import drivers, fleet, migration_packages, tasks
from lamina.server.services import policies as policy_service
from lamina.server.services.common import audit
from lamina.server.services.held import insert_held
from lamina.server.services.layer_versions import layer_ref
from lamina.server.services.layer_versions import resolve as resolve_layer
from lamina.server.services.rows import JsonObject, LayerVersion
from lamina.store.blob import BlobKind
from lamina.store.repository import Store
from lamina.tree.paths import walk

#: The agent's mode for a system laid down from layers (``agent/staging/migrate.BOOT_SET``).
SYSTEM = "system"


def _os_of_version(c: Connection, version: LayerVersion) -> dict[str, str]:
    """The os-release of the machine a layer version was captured on."""
    if not version.source_cvd:
        return {}
    cvd = c.execute(select(cvds.c.device_id).where(cvds.c.id == version.source_cvd)).first()
    if cvd is None or not cvd.device_id:
        return {}
    d = c.execute(select(devices.c.facts).where(devices.c.id == cvd.device_id)).first()
    facts = d.facts if d is not None and isinstance(d.facts, dict) else {}
    osr = facts.get("os_release")
    return osr if isinstance(osr, dict) else {}


def _release(osr: dict[str, str]) -> tuple[str, str]:
    return (str(osr.get("ID", "")), str(osr.get("VERSION_ID", "")))


def _compose(store: Store, base: LayerRef, rest: list[LayerRef], rules: RuleSet) -> bytes:
    """The base layer's tree with the app layers and packs laid over it."""
    if not rest:
        return base.root
    with store.writer() as w:
        plan = make_plan(store.get, lambda d: w.put(BlobKind.DATA, d), base.root, [], rest, rules)
        if plan.refused:
            raise ConflictError(f"the layers cannot be laid down together: {plan.refused[0]}")
        return overlay(store.get, w.put, base.root, plan.writes, plan.dirs)


def _queue(
    c: Connection,
    actor: str,
    cvd_id: str,
    device_id: str,
    tree: bytes,
    refs: list[LayerRef],
    packs: list[LayerRef],
    policy_settings: JsonObject,
    rules: RuleSet,
) -> str:
    c.execute(delete(cvd_layers).where(cvd_layers.c.cvd_id == cvd_id))
    for pos, r in enumerate(refs):
        c.execute(insert(cvd_layers).values(cvd_id=cvd_id, position=pos, version_id=r.version_id))
    return tasks.enqueue(
        c,
        "migrate",
        actor,
        cvd_id=cvd_id,
        device_id=device_id,
        params=MigrateParams(
            root=tree.hex(),
            mode=SYSTEM,
            policy=PolicySettings.model_validate(policy_settings),
            hardware_bound=list(rules.migration.hardware_bound),
            packs=[p.label for p in packs],
            versions=[r.version_id for r in refs],
            labels=[r.label for r in refs],
        ),
    )


def _layers(c: Connection, base: str, apps: list[str]) -> tuple[LayerVersion, list[LayerRef]]:
    bv, bl = resolve_layer(c, base)
    if bl.kind != "base":
        raise UsageError(f"{base} is an app layer, not a base layer")
    refs = [layer_ref(c, bv.id)]
    for a in apps:
        av, al = resolve_layer(c, a)
        if al.kind != "app":
            raise UsageError(f"{a} is not an app layer")
        refs.append(layer_ref(c, av.id))
    return bv, refs


def provision(
    engine: Engine,
    store: Store,
    actor: Principal,
    device_ref: str,
    base: str,
    apps: list[str],
    policy: str,
    name: str | None,
    dry_run: bool = False,
) -> ProvisionReport:
    """Centralize a pending device and lay its system down from the base layer (and apps)."""
    actor.require("device.write")
    actor.require("layer.write")
    epoch = store.catalog.gc_epoch()  # before its layers are resolved, its tree written
    with read_tx(engine) as c:
        d = fleet.find_device(c, device_ref)
        if d.status != fleet.PENDING:
            raise ConflictError(
                f"device {d.hostname} is {d.status}: only a pending one is provisioned"
            )
        p = policy_service.find(c, policy)
        bv, refs = _layers(c, base, apps)
        facts = d.facts if isinstance(d.facts, dict) else {}
        packs = drivers.packs_for_device(c, facts, _os_of_version(c, bv) or facts.get("os_release"))
    report = ProvisionReport(
        device=d.hostname,
        device_id=d.id,
        layers=[r.label for r in refs],
        driver_packs=[p.label for p in packs],
        kept_from_new_machine=list(for_os(facts.get("os_release")).migration.hardware_bound),
        status="dry-run" if dry_run else "queued",
        task=None,
    )
    if dry_run:
        return report
    rules = for_os(facts.get("os_release") or {})
    tree = _compose(store, refs[0], refs[1:] + packs, rules)

    def queue(c: Connection) -> tuple[str, str]:
        cid = fleet._centralize(c, actor.name, d.id, p.id, False, name)
        settings = c.execute(select(policies.c.settings).where(policies.c.id == p.id)).scalar_one()
        tid = _queue(c, actor.name, cid, d.id, tree, refs, packs, settings, rules)
        audit(
            c,
            actor.name,
            "cvd.provision",
            cid,
            device=d.id,
            task=tid,
            layers=report.layers,
        )
        return cid, tid

    cid, tid = insert_held(engine, store, epoch, [tree], queue, "the provisioning")
    return report.model_copy(update={"id": cid, "task": tid})


def migrate_os(
    engine: Engine, store: Store, actor: Principal, ref: str, base: str, dry_run: bool = False
) -> MigrateOsReport:
    """Move an endpoint to a base layer of another OS release, keeping identity and user data.

    Each assigned app layer is re-assigned to its latest version captured on the new
    base's OS release; an app layer without one does not fit and is dropped (listed).
    User-installed packages (in the last snapshot's dpkg database, owned by no layer)
    do not travel to another release: they are listed."""
    actor.require("layer.write")
    epoch = store.catalog.gc_epoch()  # before its layers are resolved, its tree written
    with read_tx(engine) as c:
        cvd = fleet.find_cvd(c, ref)
        if cvd.state != fleet.ACTIVE or not cvd.device_id:
            raise ConflictError(f"CVD {cvd.name} is {cvd.state}: it has no device to act on")
        bv, refs = _layers(c, base, [])
        new_os = _os_of_version(c, bv)
        fits, misfits = [], []
        assigned = c.execute(
            select(cvd_layers.c.version_id)
            .where(cvd_layers.c.cvd_id == cvd.id)
            .order_by(cvd_layers.c.position)
        ).scalars()
        owned: set[str] = set()  # packages the layers it runs now installed
        for vid in assigned:
            cur = c.execute(select(layer_versions).where(layer_versions.c.id == vid)).one()
            owned.update((cur.apps or {}).get("packages", {}))
            if layer_ref(c, vid).kind != "app":
                continue
            candidates = c.execute(
                select(layer_versions)
                .where(layer_versions.c.layer_id == cur.layer_id)
                .order_by(layer_versions.c.version.desc())
            ).all()
            match = next(
                (v for v in candidates if _release(_os_of_version(c, v)) == _release(new_os)), None
            )
            if match is None:
                misfits.append(layer_ref(c, vid).label)
            else:
                fits.append(layer_ref(c, match.id))
        d = c.execute(select(devices).where(devices.c.id == cvd.device_id)).one()
        facts = d.facts if isinstance(d.facts, dict) else {}
        packs = drivers.packs_for_device(c, facts, new_os)
        settings = c.execute(
            select(policies.c.settings).where(policies.c.id == cvd.policy_id)
        ).scalar_one()
    snaps = store.catalog.snapshots(fleet.cvd_source(cvd.id))
    user_pkgs: dict[str, str] = {}
    if snaps:
        entries = dict(walk(store.get, snaps[-1].root))
        user_pkgs = {
            k: v
            for k, v in migration_packages.packages_of(store, entries).items()
            if k.split(":")[0] not in owned
        }
    report = MigrateOsReport(
        id=cvd.id,
        cvd=cvd.name,
        base=refs[0].label,
        os=" ".join(_release(new_os)),
        layers=[r.label for r in [*refs, *fits]],
        app_layers_not_fitting=misfits,
        packages_not_carried=user_pkgs,
        driver_packs=[p.label for p in packs],
        status="dry-run" if dry_run else "queued",
        task=None,
    )
    if dry_run:
        return report
    rules = for_os(new_os or facts.get("os_release") or {})
    all_refs = [*refs, *fits]
    tree = _compose(store, all_refs[0], all_refs[1:] + packs, rules)

    device_id = cvd.device_id  # (an active CVD's: checked above)
    assert device_id is not None

    def queue(c: Connection) -> str:
        tid = _queue(c, actor.name, cvd.id, device_id, tree, all_refs, packs, settings, rules)
        audit(c, actor.name, "cvd.migrate_os", cvd.id, task=tid, base=report.base)
        return tid

    tid = insert_held(engine, store, epoch, [tree], queue, "the migration")
    return report.model_copy(update={"task": tid})
