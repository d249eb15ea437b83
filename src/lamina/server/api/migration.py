"""Migration routes: a CVD onto a replacement device, or back onto its own repaired one."""

from __future__ import annotations

from fastapi import APIRouter

from lamina.protocol.migration import (
    MigrateOsReport,
    MigrateOsRequest,
    MigrateRequest,
    MigrationReport,
    ProvisionReport,
    ProvisionRequest,
    RestoreSystemRequest,
)
from lamina.server.deps import Caller, Ctx
from lamina.server.services import migration, provision

router = APIRouter()


@router.post(
    "/cvds/{ref}/migrate",
    summary="Migrate a CVD to a replacement device (or only validate, with dry_run)",
)
def migrate(ref: str, req: MigrateRequest, ctx: Ctx, caller: Caller) -> MigrationReport:
    return migration.migrate(ctx.engine, ctx.store, caller, ref, req)


@router.post(
    "/cvds/{ref}/restore-system",
    summary="Restore a CVD's whole system onto its own repaired device",
)
def restore_system(
    ref: str, req: RestoreSystemRequest, ctx: Ctx, caller: Caller
) -> MigrationReport:
    full = MigrateRequest(to=req.to, mode="full", snapshot=req.snapshot, dry_run=req.dry_run)
    return migration.migrate(ctx.engine, ctx.store, caller, ref, full, same_device=True)


@router.post(
    "/devices/{ref}/provision",
    summary="Lay a pending device's system down from a base layer and create its CVD",
)
def provision_device(ref: str, req: ProvisionRequest, ctx: Ctx, caller: Caller) -> ProvisionReport:
    return provision.provision(
        ctx.engine, ctx.store, caller, ref, req.base, req.apps, req.policy, req.name, req.dry_run
    )


@router.post(
    "/cvds/{ref}/migrate-os",
    summary="Move an endpoint to a base layer of another OS release, keeping identity and data",
)
def migrate_os(ref: str, req: MigrateOsRequest, ctx: Ctx, caller: Caller) -> MigrateOsReport:
    return provision.migrate_os(ctx.engine, ctx.store, caller, ref, req.base, req.dry_run)
