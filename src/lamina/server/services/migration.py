"""Hardware migration and full-system restore: a CVD laid onto another (or its repaired) device.

``migrate`` validates first (the dry run returns only that report), then in one
transaction moves the CVD -- its snapshot history, policy and layer assignments
stay with it, keyed by the CVD -- to the new device, marks the old device
``replaced`` (its credential is refused from then on) and queues one
``migrate`` task for the new device's agent. The agent stages the boot set,
``agent boot`` applies it, and the user data streams in afterwards (see
``lamina.agent.staging.migrate``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, delete, insert, select, update

from lamina.db.engine import read_tx
from lamina.db.models import cvd_layers, cvds, devices, layer_versions, policies
from lamina.errors import ConflictError, LaminaError, UsageError
from lamina.layers.drivers import hardware_warning
from lamina.layers.merge import (
    DPKG_STATUS,
    INSTALLED,
    Stanzas,
    merge_dpkg_status,
    parse_dpkg_status,
    render_dpkg_status,
)
from lamina.layers.netmap import (
    NETWORK_SETTINGS,
    NicMap,
    is_settings,
    map_nics,
    nics,
    rewrite,
    same_model,
)
from lamina.layers.overlay import overlay
from lamina.layers.plan import LayerRef, make_plan
from lamina.layers.rules import RuleSet, for_os, matches
from lamina.protocol.migration import (
    MigrateRequest,
    MigrationReport,
    NicMapRow,
    PackageConflict,
    ReportStatus,
)
from lamina.protocol.policies import PolicySettings
from lamina.protocol.tasks import MigrateParams
from lamina.server.security import Principal
from lamina.server.services import cvd_ops, drivers, fleet, tasks
from lamina.server.services.common import audit
from lamina.server.services.held import insert_held
from lamina.server.services.layer_assign import disk_free
from lamina.server.services.layer_versions import layer_ref
from lamina.server.services.layer_versions import resolve as resolve_layer
from lamina.server.services.migration_packages import (
    entry_at,
    layer_packages,
    on_new_machine,
    package_files,
    packages_of,
    user_installed,
)
from lamina.server.services.rows import Cvd, Device, JsonObject
from lamina.store.blob import BlobKind
from lamina.store.catalog import SnapshotRecord
from lamina.store.repository import Store
from lamina.tree.model import Entry
from lamina.tree.paths import read_file, walk

#: The state of a device whose CVD moved to another device: its credential is refused.
REPLACED = "replaced"
#: Path classes each mode carries from the CVD (user_data streams in after the reboot).
CARRIED: dict[str, tuple[str, ...]] = {
    "full": ("system", "applications", "machine_identity", "user_data"),
    "apps-data": ("applications", "user_data"),
    "data": ("user_data",),
}
EXAMPLES = 20


@dataclass
class Report:
    """The validation report (the dry run's answer, and the task's first result)."""

    cvd: Cvd
    device: Device
    mode: str
    snapshot: str
    blocking: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    space_needed: int = 0
    boot_set_bytes: int = 0
    stream_bytes: int = 0
    disk_free: int | None = None
    hardware_bound: list[str] = field(default_factory=list)
    not_carried: dict[str, str] = field(default_factory=dict)
    packages: dict[str, str] = field(default_factory=dict)
    #: the driver packs the new machine's hardware gets (full mode lays the system down)
    packs: list[LayerRef] = field(default_factory=list)
    #: the storage controllers' drivers differ: the initramfs is rebuilt after the apply
    rebuild_initramfs: bool = False
    #: old NIC -> new NIC (full mode); when complete, the CVD's network settings are carried
    nics: NicMap = field(default_factory=NicMap)
    #: the CVD's network settings files (path -> entry), rewritten for the new NICs
    net_files: dict[str, Entry] = field(default_factory=dict)
    #: apps-data with --base: the base layer and the CVD's app layers, and the snapshot's
    #: applications-class files laid over them
    layers: list[LayerRef] = field(default_factory=list)
    app_files: dict[str, Entry] = field(default_factory=dict)
    #: apps-data: the snapshot's packages its layers (and the old machine's packs) brought
    from_layers: dict[str, str] = field(default_factory=dict)
    #: apps-data: the user-installed packages carried (key -> stanza), and the ones a new
    #: base layer has at another version (the base wins: a layer's package is the layer's)
    user_stanzas: Stanzas = field(default_factory=dict)
    conflicts: list[dict[str, str]] = field(default_factory=list)
    #: the snapshot's entries (path -> entry): the carried packages' files come from it
    entries: dict[str, Entry] = field(default_factory=dict)

    @property
    def carries_network(self) -> bool:
        return self.mode == "full" and self.nics.complete

    def public(self, status: ReportStatus, task: str | None = None) -> MigrationReport:
        return MigrationReport(
            id=self.cvd.id,
            cvd=self.cvd.name,
            device=self.device.hostname,
            device_id=self.device.id,
            mode=self.mode,
            snapshot=self.snapshot,
            status=status,
            task=task,
            blocking=self.blocking,
            warnings=self.warnings,
            space_needed=self.space_needed,
            disk_free=self.disk_free,
            # An upper bound: the agent takes what the new machine already holds from its disk.
            download_bytes=self.space_needed,
            boot_set_bytes=self.boot_set_bytes,
            stream_bytes=self.stream_bytes,
            driver_packs=[p.label for p in self.packs],
            kept_from_new_machine=self.hardware_bound,
            packages_carried=self.packages,
            packages_not_carried=self.not_carried,
            rebuild_initramfs=self.rebuild_initramfs,
            network=self.nics.lines,
            network_map=[NicMapRow.model_validate(r) for r in self.nics.rows],
            layers=[r.label for r in self.layers],
            packages_from_layers=self.from_layers,
            package_conflicts=[PackageConflict.model_validate(r) for r in self.conflicts],
        )

    def hardware_bound_rules(self, rules: RuleSet) -> list[str]:
        """The rule set's hardware-bound paths, less the network settings carried."""
        bound = rules.migration.hardware_bound
        if self.carries_network:
            return [p for p in bound if p not in NETWORK_SETTINGS]
        return list(bound)


def _rules(device: Device) -> RuleSet:
    return for_os(((device.facts or {}).get("os_release")) or {})


def _plan_packages(
    c: Connection,
    store: Store,
    rep: Report,
    cvd: Cvd,
    old_facts: JsonObject | None,
    facts: JsonObject,
) -> None:
    """apps-data: which of the snapshot's packages are the user's (carried) and which
    the CVD's layers brought (not carried: the new machine's system has its own); the
    user's packages the new system has at another version: with ``--base`` the new
    layers', else the new machine's, as its pending agent reported them (``facts``)."""
    e = rep.entries.get(DPKG_STATUS)
    try:
        ours = parse_dpkg_status(read_file(store.get, e)) if e and e.type == "file" else {}
    except LaminaError:
        rep.warnings.append("the CVD's package database cannot be read: no package is carried")
        return
    old_os = _os_of(c, cvd)
    owned_refs = _assigned(c, cvd.id) + drivers.packs_for_device(c, old_facts or {}, old_os)
    owned = layer_packages(store, owned_refs)
    user = user_installed(ours, owned)
    rep.from_layers = {
        s.name: s.version for k, s in ours.items() if k in owned and s.status == INSTALLED
    }
    if rep.layers:  # the new stack is known: its version of a package wins
        new = layer_packages(store, rep.layers + rep.packs)
        for k, s in sorted(user.items()):
            theirs = new.get(k)
            if theirs is None:
                continue
            del user[k]
            if theirs.version != s.version:
                rep.conflicts.append(
                    {"package": s.name, "cvd": s.version, "new": theirs.version, "wins": "new"}
                )
    rep.user_stanzas = user  # without --base, the task's list: staging decides again
    if not rep.layers and user:
        user, rep.conflicts, warning = on_new_machine(user, facts.get("packages"))
        rep.warnings += [warning] if warning else []
    rep.packages = {s.name: s.version for s in user.values()}


def _validate(
    c: Connection, store: Store, cvd: Cvd, device: Device, req: MigrateRequest, same_device: bool
) -> tuple[Report, SnapshotRecord]:
    snap = cvd_ops.snapshot_of(store, cvd.id, req.snapshot)
    rep = Report(cvd, device, req.mode, snap.id)
    if same_device and device.id == cvd.device_id:
        pass  # its own device, still enrolled: the system is laid back over it
    elif device.status != fleet.PENDING:
        rep.blocking.append(
            f"device {device.hostname} is {device.status}: a CVD migrates onto a pending device"
        )
    if req.base and req.keep_base:
        raise UsageError("give either --base or --keep-base, not both")
    if req.base:
        version, layer = resolve_layer(c, req.base)
        if layer.kind != "base":
            raise UsageError(f"{req.base} is an app layer, not a base layer")
        if req.mode != "apps-data":
            rep.blocking.append("--base applies to --mode apps-data (full mode carries the system)")
        else:  # the new base, then the CVD's app layers as assigned
            rep.layers = [layer_ref(c, version.id)] + [
                r for r in _assigned(c, cvd.id) if r.kind == "app"
            ]
    rules = _rules(device)
    facts = device.facts if isinstance(device.facts, dict) else {}
    old_facts = drivers.last_device_facts(c, cvd.id, cvd.device_id)
    if req.mode == "full":  # the CVD's system, so its network settings, on other NICs
        rep.nics = map_nics(nics(old_facts), nics(facts), same_model(old_facts, facts))
    bound = rep.hardware_bound_rules(rules)
    entries: dict[str, Entry] = {}
    carried = CARRIED[req.mode]
    for path, e in walk(store.get, snap.root):
        entries[path] = e
        if e.type == "dir":
            continue
        cls = rules.classify(path)
        if rep.carries_network and e.type == "file" and is_settings(path):
            rep.net_files[path] = e
        if rep.layers and cls == "applications":
            rep.app_files[path] = e
        if matches(bound, path):
            if len(rep.hardware_bound) < EXAMPLES * 5:
                rep.hardware_bound.append(path)
            continue
        if cls not in carried:
            continue
        if cls == "user_data":
            rep.stream_bytes += e.size
        else:
            rep.boot_set_bytes += e.size
    rep.space_needed = rep.boot_set_bytes + rep.stream_bytes
    rep.disk_free = disk_free(c, device.id)
    if rep.disk_free is not None and rep.space_needed > rep.disk_free:
        rep.blocking.append(
            f"the migration needs {rep.space_needed} bytes, device {device.hostname} "
            f"has {rep.disk_free} free"
        )
    rep.entries = entries
    ours = packages_of(store, entries)
    if req.mode == "data":
        rep.not_carried = ours  # data mode carries no software
    elif req.mode == "full":
        rep.packages = ours  # the CVD's whole system is carried
    old_os = _os_of(c, cvd)
    new_os = (device.facts or {}).get("os_release") or {}
    if req.mode != "full" and old_os and new_os and _release(old_os) != _release(new_os):
        rep.warnings.append(
            f"the CVD ran {_release(old_os)}, the new machine runs {_release(new_os)}: "
            "applications and packages built for the old release may not work"
        )
    if req.mode == "full" and req.base:
        rep.warnings.append("full mode keeps the CVD's own system: --base is ignored")
    if rep.layers:  # a system laid down from the base layer: the packs for its OS
        base_os = _os_of_version(c, rep.layers[0].version_id) or new_os
        rep.packs = drivers.packs_for_device(c, facts, base_os)
    if req.mode == "apps-data":
        _plan_packages(c, store, rep, cvd, old_facts, facts)
    if req.mode == "full":  # the CVD's system is laid down on this hardware: its packs go with it
        rep.packs = drivers.packs_for_device(c, facts, old_os or new_os)
        warning = hardware_warning(facts, old_facts, rep.packs)
        if warning:
            rep.warnings.append(warning)
        old_drivers, new_drivers = _storage_drivers(old_facts), _storage_drivers(facts)
        rep.rebuild_initramfs = bool(new_drivers) and old_drivers != new_drivers
    return rep, snap


def _storage_drivers(facts: JsonObject | None) -> set[str]:
    ctrls = (facts or {}).get("storage_controllers")
    if not isinstance(ctrls, list):
        return set()
    return {str(s["driver"]) for s in ctrls if isinstance(s, dict) and s.get("driver")}


def _with_packs(store: Store, snap_root: bytes, packs: list[LayerRef], rules: RuleSet) -> bytes:
    """The snapshot with the driver packs laid over it (files, and dpkg's database merged)."""
    with store.writer() as w:
        plan = make_plan(store.get, lambda d: w.put(BlobKind.DATA, d), snap_root, [], packs, rules)
        if plan.refused:
            raise ConflictError(f"the driver packs cannot be laid down: {plan.refused[0]}")
        return overlay(store.get, w.put, snap_root, plan.writes, plan.dirs)


def _with_network(store: Store, root: bytes, rep: Report) -> bytes:
    """The tree with the CVD's network settings rewritten for the new machine's NICs."""
    writes: dict[str, Entry] = {}
    drop: set[str] = set()
    for path, e in rep.net_files.items():
        try:
            data = read_file(store.get, e)
        except LaminaError:
            data = b""
        out = rewrite(path, data, rep.nics)
        if out is None:
            rep.nics.lines.append(f"{path}: not text or too large, carried as the CVD had it")
            continue
        new_path, text = out
        if new_path == path and text == data:
            continue
        with store.writer() as w:
            cid = w.put(BlobKind.DATA, text)
        writes[new_path] = dataclasses.replace(e, content=[cid], size=len(text))
        if new_path != path:
            drop.add(path)
            rep.nics.lines.append(f"{path}: renamed {new_path}")
    if not writes and not drop:
        return root
    with store.writer() as w:
        return overlay(store.get, w.put, root, writes, {}, frozenset(drop - writes.keys()))


def _assigned(c: Connection, cvd_id: str) -> list[LayerRef]:
    ids = c.execute(
        select(cvd_layers.c.version_id)
        .where(cvd_layers.c.cvd_id == cvd_id)
        .order_by(cvd_layers.c.position)
    ).scalars()
    return [layer_ref(c, v) for v in ids]


def _os_of_version(c: Connection, version_id: str) -> dict[str, str]:
    """The os-release of the machine a layer version was captured on."""
    v = c.execute(
        select(layer_versions.c.source_cvd).where(layer_versions.c.id == version_id)
    ).first()
    if v is None or not v.source_cvd:
        return {}
    cvd = c.execute(select(cvds.c.device_id).where(cvds.c.id == v.source_cvd)).first()
    facts = _device_facts(c, cvd.device_id if cvd is not None else None)
    osr = facts.get("os_release")
    return osr if isinstance(osr, dict) else {}


def _device_facts(c: Connection, device_id: str | None) -> JsonObject:
    return drivers.device_facts(c, device_id) or {}


def _on_base(store: Store, rep: Report, rules: RuleSet) -> bytes:
    """The base layer with the CVD's app layers and the packs, then the snapshot's
    applications laid over it."""
    base, rest = rep.layers[0], rep.layers[1:] + rep.packs
    tree = _with_packs(store, base.root, rest, rules) if rest else base.root
    if rep.app_files:
        with store.writer() as w:
            tree = overlay(store.get, w.put, tree, rep.app_files, {})
    return _with_user_packages(store, tree, rep)


def _with_user_packages(store: Store, tree: bytes, rep: Report) -> bytes:
    """The composed tree with the CVD's user-installed packages merged in: their stanzas
    over its package database (per package, as layers merge: the tree's own stanza of a
    package wins) and their files where the tree has none (a file of the new system is
    never replaced)."""
    if not rep.user_stanzas:
        return tree
    status = entry_at(store, tree, DPKG_STATUS)
    if status is None or status.type != "file":
        rep.warnings.append("the new base layer has no package database: no package is carried")
        return tree
    base = parse_dpkg_status(read_file(store.get, status))
    merged = merge_dpkg_status([base], rep.user_stanzas, set())
    writes = {
        p: rep.entries[p]
        for p in package_files(store, rep.entries, rep.user_stanzas)
        if p != DPKG_STATUS and entry_at(store, tree, p) is None
    }
    data = render_dpkg_status(merged)
    with store.writer() as w:
        writes[DPKG_STATUS] = dataclasses.replace(
            status, content=[w.put(BlobKind.DATA, data)], size=len(data)
        )
        dirs = {p: e for p, e in rep.entries.items() if e.type == "dir"}
        return overlay(store.get, w.put, tree, writes, dirs)


def _release(osr: dict[str, str]) -> str:
    return f"{osr.get('ID', '?')} {osr.get('VERSION_ID', '?')}"


def _os_of(c: Connection, cvd: Cvd) -> dict[str, str]:
    if not cvd.device_id:
        return {}
    d = c.execute(select(devices).where(devices.c.id == cvd.device_id)).first()
    return ((d.facts or {}).get("os_release") or {}) if d else {}


def migrate(
    engine: Engine,
    store: Store,
    actor: Principal,
    ref: str,
    req: MigrateRequest,
    *,
    same_device: bool = False,
) -> MigrationReport:
    """Validate; unless a dry run or blocked, move the CVD and queue the new device's task.

    ``same_device``: a full-system restore (``restore-system``) onto the CVD's own
    repaired device: enrolled again (pending) after a disk replacement, or still its own."""
    actor.require("device.write")
    if same_device and req.mode != "full":
        raise UsageError("a system restore is a full one")
    # before the snapshot is chosen and any tree written: a gc that condemns after this
    # makes the task's row rescue what it names (``insert_held``)
    epoch = store.catalog.gc_epoch()
    with read_tx(engine) as c:
        cvd = fleet.find_cvd(c, ref)
        device = fleet.find_device(c, req.to)
        rep, snap = _validate(c, store, cvd, device, req, same_device)
    if req.dry_run:
        return rep.public("dry-run")
    if rep.blocking:
        raise ConflictError(f"migration refused: {rep.blocking[0]}")
    rules = _rules(device)
    action = "cvd.restore_system" if same_device else "cvd.migrate"
    if rep.layers:
        tree = _on_base(store, rep, rules)
    else:
        tree = _with_packs(store, snap.root, rep.packs, rules) if rep.packs else snap.root
    if rep.carries_network:
        tree = _with_network(store, tree, rep)

    def queue(c: Connection, cvd: Cvd = cvd) -> str:
        """The move and the new device's task, naming ``tree`` (``insert_held``)."""
        cvd = fleet.find_cvd(c, cvd.id)  # again, inside the transaction
        if device.id != cvd.device_id:
            d = fleet.find_device(c, device.id)
            if d.status != fleet.PENDING:
                raise ConflictError(f"device {d.hostname} is {d.status} now: not migrated")
            if cvd.device_id and cvd.device_id != device.id:
                c.execute(
                    update(devices).where(devices.c.id == cvd.device_id).values(status=REPLACED)
                )
            c.execute(update(devices).where(devices.c.id == device.id).values(status=fleet.ACTIVE))
        name = req.name or cvd.name
        if name != cvd.name and c.execute(select(cvds.c.id).where(cvds.c.name == name)).first():
            raise ConflictError(f"a CVD named {name!r} exists already")
        c.execute(
            update(cvds)
            .where(cvds.c.id == cvd.id)
            .values(device_id=device.id, state=fleet.ACTIVE, name=name)
        )
        policy = c.execute(select(policies).where(policies.c.id == cvd.policy_id)).one()
        if rep.layers:  # the new base is the CVD's from now on, its app layers after it
            c.execute(delete(cvd_layers).where(cvd_layers.c.cvd_id == cvd.id))
            for pos, r in enumerate(rep.layers):
                c.execute(
                    insert(cvd_layers).values(cvd_id=cvd.id, position=pos, version_id=r.version_id)
                )
        params = MigrateParams(
            snapshot=snap.id,
            root=tree.hex(),
            mode=req.mode,
            packs=[p.label for p in rep.packs],
            policy=PolicySettings.model_validate(policy.settings),
            hardware_bound=rep.hardware_bound_rules(rules),
            restore_system=same_device,
            rebuild_initramfs=rep.rebuild_initramfs,
            user_packages=(
                sorted(rep.user_stanzas) if req.mode == "apps-data" and not rep.layers else None
            ),
            base=rep.layers[0].label if rep.layers else None,
            stream_root=snap.root.hex() if rep.layers else None,
            versions=[r.version_id for r in rep.layers + rep.packs] if rep.layers else None,
            labels=[r.label for r in rep.layers + rep.packs] if rep.layers else [],
        )
        tid = tasks.enqueue(
            c, "migrate", actor.name, cvd_id=cvd.id, device_id=device.id, params=params
        )
        audit(
            c,
            actor.name,
            action,
            cvd.id,
            task=tid,
            device=device.id,
            replaced=cvd.device_id if cvd.device_id != device.id else None,
            mode=req.mode,
            snapshot=snap.id,
            packs=[p.label for p in rep.packs],
        )
        rep.cvd = fleet.find_cvd(c, cvd.id)
        return tid

    # the tree it delivers, and the snapshot it streams after it onto a new base
    held = [tree, snap.root] if rep.layers else [tree]
    tid = insert_held(engine, store, epoch, held, queue, "the migration")
    return rep.public("queued", tid)
