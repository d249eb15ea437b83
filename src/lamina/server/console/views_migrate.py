"""Whole-system operations: migrate a CVD to a replacement device, restore its system onto
its repaired one, move it to another OS release, provision a pending device from layers.

Each is three steps, as the CLI's ``--dry-run`` then the real call: a form, the service's
dry-run report (blocking reasons, warnings, hardware-bound paths, driver packs) with the
action's button only when nothing blocks, then the real call, which answers with its task.
The same service functions as ``/api/v1/cvds/{ref}/migrate|restore-system|migrate-os`` and
``/api/v1/devices/{ref}/provision``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request, Response

from lamina.errors import NotFoundError, UsageError
from lamina.protocol.schemas import MigrateRequest, MigrationMode
from lamina.server.console.forms import Ref, Snapshot
from lamina.server.console.views_cvd import choices
from lamina.server.console.views_fleet import pending_form
from lamina.server.console.web import Actor, ConsoleRoute, Ctx, render, see_other
from lamina.server.services import cvd_ops, dashboard, fleet, migration, provision

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
#: The base-layer choice of a migration form that keeps the new machine's own system.
KEEP = "keep"
TITLES = {
    "migrate": "Migrate",
    "restore-system": "Restore system",
    "migrate-os": "Migrate OS",
}


#: The whole-system operations on a CVD, each with its form, and what each needs.
OPERATIONS = {
    "migrate": "device.write",
    "restore-system": "device.write",
    "migrate-os": "layer.write",
}


@router.get("/cvds/{ref}/{op}")
def cvd_form(request: Request, ctx: Ctx, actor: Actor, ref: str, op: str) -> Response:
    """The form of a whole-system operation (``OPERATIONS``) on the CVD ``ref``."""
    if op not in OPERATIONS:
        raise NotFoundError(f"no CVD page {op!r}")
    actor.require(OPERATIONS[op])
    cvd = fleet.show_cvd(ctx.engine, actor, ref)
    return render(
        request,
        "migrate.html",
        actor,
        op=op,
        title=f"{TITLES[op]}: {cvd.name}",
        cvd=cvd,
        device=dashboard.device_of_cvd(ctx.engine, actor, cvd.id),
        pending=_pending(ctx, actor) if op != "migrate-os" else None,
        snapshots=list(reversed(cvd_ops.list_snapshots(ctx.engine, ctx.store, actor, cvd.id))),
        bases=choices(ctx, actor)["base"],
        action=f"/cvds/{cvd.id}/{op}",
    )


def _pending(ctx: Ctx, actor: Actor) -> dashboard.DevicePage:
    """The first page of pending devices by hostname (the device list's one query)."""
    query = dashboard.DeviceQuery(health="pending", size=dashboard.MAX_PAGE)
    return dashboard.device_page(ctx.engine, actor, query)


def _target(to: Ref = "", to_other: Ref = "") -> str:
    """The target device: typed (hostname or id), else the one chosen in the list."""
    return to_other.strip() or to


Target = Annotated[str, Depends(_target)]


def _report(
    request: Request,
    actor: Actor,
    op: str,
    title: str,
    report: dict[str, Any],
    at: str,
    hidden: dict[str, Any],
) -> Response:
    """The dry run's report, with the form that does it (posted to ``at``, the form's page)."""
    return render(
        request,
        "migrate_report.html",
        actor,
        op=op,
        title=title,
        report=report,
        action=at,
        back=at,
        hidden={k: v for k, v in hidden.items() if v not in (None, "", False)},
    )


# --- migrate ----------------------------------------------------------------------------
def _migrate_request(
    to: str, mode: MigrationMode, base: str, name: str, snapshot: str, dry_run: bool
) -> MigrateRequest:
    if not to:
        raise UsageError("choose the target device, or type its hostname")
    return MigrateRequest(
        to=to,
        mode=mode,
        base=base if base and base != KEEP else None,
        keep_base=base == KEEP,
        name=name.strip() or None,
        snapshot=snapshot or "latest",
        dry_run=dry_run,
    )


@router.post("/cvds/{ref}/migrate/preview")
@router.post("/cvds/{ref}/migrate")
def migrate(
    request: Request,
    ctx: Ctx,
    actor: Actor,
    ref: str,
    to: Target,
    mode: Annotated[MigrationMode, Form()] = "full",
    base: Ref = "",
    name: Ref = "",
    snapshot: Snapshot = "latest",
) -> Response:
    """The dry run (``…/preview``) and its report; then the migration, a task."""
    dry_run = request.url.path.endswith("/preview")
    req = _migrate_request(to, mode, base, name, snapshot, dry_run)
    report = migration.migrate(ctx.engine, ctx.store, actor, ref, req)
    if not dry_run:
        return see_other(f"/tasks/{report['task']}")
    title = f"Migrate {report['cvd']} to {report['device']}"
    hidden = {"to": report["device_id"], "mode": mode, "base": base, "name": name}
    hidden["snapshot"] = report["snapshot"]
    at = f"/cvds/{report['id']}/migrate"
    return _report(request, actor, "migrate", title, report, at, hidden)


# --- restore system ---------------------------------------------------------------------
def _restore_system(
    ctx: Ctx, actor: Actor, ref: str, to: str, snapshot: str, dry_run: bool
) -> dict[str, Any]:
    if not to:
        raise UsageError("choose the device, or type its hostname")
    req = MigrateRequest(to=to, mode="full", snapshot=snapshot or "latest", dry_run=dry_run)
    return migration.migrate(ctx.engine, ctx.store, actor, ref, req, same_device=True)


@router.post("/cvds/{ref}/restore-system/preview")
@router.post("/cvds/{ref}/restore-system")
def restore_system(
    request: Request, ctx: Ctx, actor: Actor, ref: str, to: Target, snapshot: Snapshot = "latest"
) -> Response:
    """The dry run (``…/preview``) and its report; then the restore, a task."""
    dry_run = request.url.path.endswith("/preview")
    report = _restore_system(ctx, actor, ref, to, snapshot, dry_run)
    if not dry_run:
        return see_other(f"/tasks/{report['task']}")
    title = f"Restore the system of {report['cvd']} onto {report['device']}"
    hidden = {"to": report["device_id"], "snapshot": report["snapshot"]}
    at = f"/cvds/{report['id']}/restore-system"
    return _report(request, actor, "restore-system", title, report, at, hidden)


# --- migrate OS -------------------------------------------------------------------------
@router.post("/cvds/{ref}/migrate-os/preview")
@router.post("/cvds/{ref}/migrate-os")
def migrate_os(
    request: Request,
    ctx: Ctx,
    actor: Actor,
    ref: str,
    base: Annotated[str, Form(min_length=1, max_length=255)],
) -> Response:
    """The dry run (``…/preview``) and its report; then the move, a task."""
    dry_run = request.url.path.endswith("/preview")
    report = provision.migrate_os(ctx.engine, ctx.store, actor, ref, base, dry_run)
    if not dry_run:
        return see_other(f"/tasks/{report['task']}")
    title = f"Move {report['cvd']} to {report['os']}"
    at = f"/cvds/{report['id']}/migrate-os"
    return _report(request, actor, "migrate-os", title, report, at, {"base": base})


# --- provision a pending device ---------------------------------------------------------
@router.get("/devices/{device_id}/provision")
def provision_form(request: Request, ctx: Ctx, actor: Actor, device_id: str) -> Response:
    actor.require("device.write")
    actor.require("layer.write")
    device = dashboard.pending_device(ctx.engine, actor, device_id)
    return pending_form(request, ctx, actor, "provision.html", device, choices=choices(ctx, actor))


@router.post("/devices/{device_id}/provision/preview")
@router.post("/devices/{device_id}/provision")
def provision_device(
    request: Request,
    ctx: Ctx,
    actor: Actor,
    device_id: str,
    base: Annotated[str, Form(min_length=1, max_length=255)],
    policy: Annotated[str, Form(min_length=1, max_length=255)],
    apps: Annotated[list[str] | None, Form()] = None,
    name: Ref = "",
) -> Response:
    """The dry run (``…/preview``) and its report; then the provisioning, a task."""
    dry_run = request.url.path.endswith("/preview")
    chosen = [a for a in apps or [] if a]
    report = provision.provision(
        ctx.engine, ctx.store, actor, device_id, base, chosen, policy, name.strip() or None, dry_run
    )
    if not dry_run:
        return see_other(f"/tasks/{report['task']}")
    hidden = {"base": base, "policy": policy, "name": name, "apps": chosen}
    at = f"/devices/{report['device_id']}/provision"
    return _report(request, actor, "provision", f"Provision {report['device']}", report, at, hidden)
