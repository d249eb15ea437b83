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

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import cvds, devices, policies
from lamina.errors import ConflictError, UsageError
from lamina.layers.drivers import hardware_warning
from lamina.layers.merge import DPKG_STATUS, installed, parse_dpkg_status
from lamina.layers.overlay import overlay
from lamina.layers.plan import LayerRef, make_plan
from lamina.layers.rules import RuleSet, for_os
from lamina.protocol.schemas import MigrateRequest
from lamina.server.security import Principal
from lamina.server.services import cvd_ops, drivers, fleet, tasks
from lamina.server.services.common import audit
from lamina.server.services.layer_assign import disk_free
from lamina.server.services.layer_versions import resolve as resolve_layer
from lamina.store.blob import BlobKind
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

    cvd: Any
    device: Any
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

    def public(self, status: str, task: str | None = None) -> dict[str, Any]:
        return {
            "id": self.cvd.id,
            "cvd": self.cvd.name,
            "device": self.device.hostname,
            "device_id": self.device.id,
            "mode": self.mode,
            "snapshot": self.snapshot,
            "status": status,
            "task": task,
            "blocking": self.blocking,
            "warnings": self.warnings,
            "space_needed": self.space_needed,
            "disk_free": self.disk_free,
            # An upper bound: the agent takes what the new machine already holds from its disk.
            "download_bytes": self.space_needed,
            "boot_set_bytes": self.boot_set_bytes,
            "stream_bytes": self.stream_bytes,
            "driver_packs": [p.label for p in self.packs],
            "kept_from_new_machine": self.hardware_bound,
            "packages_carried": self.packages,
            "packages_not_carried": self.not_carried,
            "rebuild_initramfs": self.rebuild_initramfs,
        }


def _rules(device: Any) -> RuleSet:
    return for_os(((device.facts or {}).get("os_release")) or {})


def packages_of(store: Store, entries: dict[str, Entry]) -> dict[str, str]:
    e = entries.get(DPKG_STATUS)
    if e is None or e.type != "file":
        return {}
    return installed(parse_dpkg_status(read_file(store.get, e)))


def _validate(
    c: Connection, store: Store, cvd: Any, device: Any, req: MigrateRequest, same_device: bool
) -> tuple[Report, Any]:
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
        _version, layer = resolve_layer(c, req.base)
        if layer.kind != "base":
            raise UsageError(f"{req.base} is an app layer, not a base layer")
        if req.mode != "apps-data":
            rep.blocking.append("--base applies to --mode apps-data (full mode carries the system)")
    rules = _rules(device)
    entries: dict[str, Entry] = {}
    carried = CARRIED[req.mode]
    for path, e in walk(store.get, snap.root):
        entries[path] = e
        if e.type == "dir":
            continue
        cls = rules.classify(path)
        if rules.hardware_bound(path):
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
    ours = packages_of(store, entries)
    if req.mode == "data":
        rep.not_carried = ours  # data mode carries no software
    else:
        rep.packages = ours
    old_os = _os_of(c, cvd)
    new_os = (device.facts or {}).get("os_release") or {}
    if req.mode != "full" and old_os and new_os and _release(old_os) != _release(new_os):
        rep.warnings.append(
            f"the CVD ran {_release(old_os)}, the new machine runs {_release(new_os)}: "
            "applications and packages built for the old release may not work"
        )
    if req.mode == "full" and req.base:
        rep.warnings.append("full mode keeps the CVD's own system: --base is ignored")
    facts = device.facts if isinstance(device.facts, dict) else {}
    if req.mode == "full":  # the CVD's system is laid down on this hardware: its packs go with it
        rep.packs = drivers.packs_for_device(c, facts, old_os or new_os)
        old_facts = _facts_of(c, cvd.device_id) if cvd.device_id != device.id else None
        warning = hardware_warning(facts, old_facts, rep.packs)
        if warning:
            rep.warnings.append(warning)
        old_drivers, new_drivers = _storage_drivers(old_facts), _storage_drivers(facts)
        rep.rebuild_initramfs = bool(new_drivers) and old_drivers != new_drivers
    return rep, snap


def _storage_drivers(facts: dict[str, Any] | None) -> set[str]:
    ctrls = (facts or {}).get("storage_controllers")
    if not isinstance(ctrls, list):
        return set()
    return {str(s["driver"]) for s in ctrls if isinstance(s, dict) and s.get("driver")}


def _facts_of(c: Connection, device_id: str | None) -> dict[str, Any] | None:
    if not device_id:
        return None
    d = c.execute(select(devices.c.facts).where(devices.c.id == device_id)).first()
    return d.facts if d is not None and isinstance(d.facts, dict) else None


def _with_packs(store: Store, snap_root: bytes, packs: list[LayerRef], rules: RuleSet) -> bytes:
    """The snapshot with the driver packs laid over it (files, and dpkg's database merged)."""
    with store.writer() as w:
        plan = make_plan(store.get, lambda d: w.put(BlobKind.DATA, d), snap_root, [], packs, rules)
        if plan.refused:
            raise ConflictError(f"the driver packs cannot be laid down: {plan.refused[0]}")
        return overlay(store.get, w.put, snap_root, plan.writes, plan.dirs)


def _release(osr: dict[str, str]) -> str:
    return f"{osr.get('ID', '?')} {osr.get('VERSION_ID', '?')}"


def _os_of(c: Connection, cvd: Any) -> dict[str, str]:
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
) -> dict[str, Any]:
    """Validate; unless a dry run or blocked, move the CVD and queue the new device's task.

    ``same_device``: a full-system restore (``restore-system``) onto the CVD's own
    repaired device: enrolled again (pending) after a disk replacement, or still its own."""
    actor.require("device.write")
    if same_device and req.mode != "full":
        raise UsageError("a system restore is a full one")
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
    tree = _with_packs(store, snap.root, rep.packs, rules) if rep.packs else snap.root
    with write_tx(engine) as c:
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
        tid = tasks.enqueue(
            c,
            "migrate",
            actor.name,
            cvd_id=cvd.id,
            device_id=device.id,
            params={
                "snapshot": snap.id,
                "root": tree.hex(),
                "mode": req.mode,
                "packs": [p.label for p in rep.packs],
                "policy": policy.settings,
                "hardware_bound": list(rules.migration.hardware_bound),
                "restore_system": same_device,
                "rebuild_initramfs": rep.rebuild_initramfs,
            },
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
    return rep.public("queued", tid)
