"""The CVD page, its actions (each behind a confirmation), layer assignment, the file portal."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import StreamingResponse

from lamina.errors import ConflictError, NotFoundError, UsageError
from lamina.protocol.layers import PlanPublic
from lamina.protocol.schemas import RestoreRequest, RevertRequest
from lamina.server.console import archive
from lamina.server.console.forms import Check, Chosen, Text
from lamina.server.console.web import Actor, ConsoleRoute, Ctx, confirm_page, render, see_other
from lamina.server.services import cvd_ops, dashboard, fleet, layers, policies, portal, tasks

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
ACTIONS = ("sync", "restore", "revert", "enforce", "archive", "revoke")


@router.get("/cvds/{ref}")
def cvd_page(request: Request, ctx: Ctx, actor: Actor, ref: str) -> Response:
    cvd = fleet.show_cvd(ctx.engine, actor, ref)
    return render(
        request,
        "cvd.html",
        actor,
        cvd=cvd,
        device=dashboard.device_of_cvd(ctx.engine, actor, cvd.id),
        policy=policies.show(ctx.engine, actor, cvd.policy),
        layer_state=layers.cvd_layer_state(ctx.engine, cvd.id),
        snapshots=list(reversed(cvd_ops.list_snapshots(ctx.engine, ctx.store, actor, cvd.id))),
        recent=tasks.list_tasks(ctx.engine, actor, cvd_id=cvd.id, limit=10),
    )


def _what(ctx: Ctx, actor: Actor, cvd: Any, action: str, snapshot: str, path: str) -> str:
    host = cvd.hostname or cvd.name
    if action == "sync":
        return f"The agent of {host} uploads a new snapshot of {cvd.name} at its next check-in."
    if action == "restore":
        what = f"“{path}”" if path else "every protected file"
        return (
            f"The agent of {host} writes {what} from snapshot {snapshot} back onto the endpoint. "
            "Files that exist there are kept unless you tick “Overwrite”."
        )
    if action == "revert":
        return (
            f"At its next boot, {host} is put back to snapshot {snapshot}. With “System only” "
            "ticked, user files are kept as they are now."
        )
    if action == "enforce":
        assigned = layers.cvd_layer_state(ctx.engine, cvd.id)["assigned"]
        return (
            f"Every file of the assigned layers ({', '.join(assigned) or 'none'}) is put back "
            f"on {host} as the layer has it; user files outside the layers are kept."
        )
    if action == "revoke":
        return (
            f"The credential of {host} is revoked: every call its agent makes is refused from "
            f"now on, so {cvd.name} gets no new snapshot. The CVD and its {cvd.snapshots} "
            "snapshots stay; enroll the device again to bring it back."
        )
    return (
        f"{host} is detached from {cvd.name} and its credential is revoked: every call its "
        f"agent makes is refused from now on. The CVD stays, read-only, with its "
        f"{cvd.snapshots} snapshots."
    )


@dataclass(frozen=True)
class Place:
    """Where in a CVD's snapshots a page is (its query): a snapshot (an id, a prefix of
    one, or ``latest``) and a path in it (empty: the whole snapshot)."""

    snapshot: str = "latest"
    path: str = ""

    def crumbs(self) -> list[tuple[str, str]]:
        """Each folder on the way down to ``path``: ``(name, its path)``."""
        parts = self.path.split("/") if self.path else []
        return [(name, "/".join(parts[: i + 1])) for i, name in enumerate(parts)]

    def join(self, name: str) -> str:
        return f"{self.path}/{name}" if self.path else name

    def query(self, **params: str) -> str:
        """The query string of this snapshot and ``params`` (``path=...``)."""
        return urlencode({"snapshot": self.snapshot, **params})


At = Annotated[Place, Depends()]


@router.get("/cvds/{ref}/confirm/{action}")
def confirm(request: Request, ctx: Ctx, actor: Actor, ref: str, action: str, at: At) -> Response:
    """The page that says what ``action`` will do (of a restore, the snapshot and path
    ``at``), with its button."""
    snapshot, path = at.snapshot, at.path
    if action not in ACTIONS:
        raise NotFoundError(f"no CVD action {action!r}")
    actor.require(
        {"archive": "device.write", "revoke": "device.write", "enforce": "layer.write"}.get(
            action, "cvd.operate"
        )
    )
    cvd = fleet.show_cvd(ctx.engine, actor, ref)
    snaps = cvd_ops.list_snapshots(ctx.engine, ctx.store, actor, cvd.id)
    if action in ("restore", "revert"):
        if not snaps:
            raise NotFoundError(f"CVD {cvd.name} has no snapshot yet")
        snapshot = cvd_ops.snapshot_of(ctx.store, cvd.id, snapshot).id
    labels = {
        "sync": "Sync now",
        "restore": "Restore",
        "revert": "Revert",
        "enforce": "Enforce",
        "archive": "Archive",
        "revoke": "Revoke device",
    }
    return confirm_page(
        request,
        actor,
        title=f"{labels[action]}: {cvd.name}",
        what=_what(ctx, actor, cvd, action, snapshot, path),
        action=f"/cvds/{cvd.id}/{action}",
        button=labels[action],
        back=f"/cvds/{cvd.id}",
        fields={"snapshot": snapshot, "path": path} if action in ("restore", "revert") else {},
        kind=action,
        snapshots=list(reversed(snaps)),
        snapshot=snapshot,
    )


@router.post("/cvds/{ref}/sync")
def sync(ctx: Ctx, actor: Actor, ref: str) -> Response:
    task = cvd_ops.request_sync(ctx.engine, actor, ref)
    return see_other(f"/tasks/{task.id}")


def _restore_form(snapshot: Chosen, path: Text = "", overwrite: Check = "") -> RestoreRequest:
    """The restore confirmation's form, as the API's request (one path, or everything)."""
    paths = [path] if path.strip("/") else []
    return RestoreRequest(snapshot=snapshot, paths=paths, overwrite=bool(overwrite))


def _revert_form(snapshot: Chosen, system_only: Check = "") -> RevertRequest:
    """The revert confirmation's form, as the API's request."""
    return RevertRequest(snapshot=snapshot, system_only=bool(system_only))


RestoreForm = Annotated[RestoreRequest, Depends(_restore_form)]
RevertForm = Annotated[RevertRequest, Depends(_revert_form)]


@router.post("/cvds/{ref}/restore")
def restore(ctx: Ctx, actor: Actor, ref: str, req: RestoreForm) -> Response:
    task = cvd_ops.request_restore(ctx.engine, ctx.store, actor, ref, req)
    return see_other(f"/tasks/{task.id}")


@router.post("/cvds/{ref}/revert")
def revert(ctx: Ctx, actor: Actor, ref: str, req: RevertForm) -> Response:
    task = cvd_ops.request_revert(ctx.engine, ctx.store, actor, ref, req)
    return see_other(f"/tasks/{task.id}")


@router.post("/cvds/{ref}/enforce")
def enforce(request: Request, ctx: Ctx, actor: Actor, ref: str) -> Response:
    result = layers.enforce(ctx.engine, ctx.store, actor, ref)
    if result.task:
        return see_other(f"/tasks/{result.task}")
    # Refused (e.g. not enough space): say why, with the plan.
    return plan_page(request, actor, result.cvd, [result], back=f"/cvds/{result.id}")


@router.post("/cvds/{ref}/archive")
def archive_cvd(ctx: Ctx, actor: Actor, ref: str) -> Response:
    cvd = fleet.archive(ctx.engine, actor, ref)
    return see_other(f"/cvds/{cvd.id}")


@router.post("/cvds/{ref}/revoke")
def revoke_device(ctx: Ctx, actor: Actor, ref: str) -> Response:
    actor.require("device.write")  # before saying whether the CVD has a device
    cvd = fleet.show_cvd(ctx.engine, actor, ref)
    if not cvd.device_id:
        raise ConflictError(f"CVD {cvd.name} has no device to revoke")
    fleet.revoke(ctx.engine, actor, cvd.device_id)
    return see_other(f"/cvds/{cvd.id}")


# --- layer assignment: choose → dry run table → Assign -----------------------------
def choices(ctx: Ctx, actor: Actor) -> dict[str, list[str]]:
    base: list[str] = []
    apps: list[str] = []
    for layer in layers.list_layers(ctx.engine, actor):
        for v in reversed(layer.versions):
            (base if layer.kind == "base" else apps).append(f"{layer.name}:{v.version}")
    return {"base": base, "apps": apps}


@router.get("/cvds/{ref}/assign")
def assign_form(request: Request, ctx: Ctx, actor: Actor, ref: str) -> Response:
    actor.require("layer.write")
    cvd = fleet.show_cvd(ctx.engine, actor, ref)
    return render(
        request,
        "assign.html",
        actor,
        cvd=cvd,
        choices=choices(ctx, actor),
        current=layers.cvd_layer_state(ctx.engine, cvd.id),
    )


def assign_plans(
    ctx: Ctx,
    actor: Actor,
    targets: list[str],
    base: str,
    apps: list[str] | None,
    dry_run: bool,
    collection: str | None = None,
) -> tuple[list[PlanPublic], list[str]]:
    """``layers.assign`` on a form's choices (a dry run needs at least one); the apps chosen."""
    chosen = [a for a in apps or [] if a]
    if dry_run and not base and not chosen:
        raise UsageError("choose a base layer or at least one app layer")
    plans = layers.assign(
        ctx.engine, ctx.store, actor, targets, base or None, chosen, dry_run, collection
    )
    return plans, chosen


def plan_page(
    request: Request,
    actor: Actor,
    target: str,
    plans: list[PlanPublic],
    base: str = "",
    apps: list[str] | None = None,
    action: str = "",
    back: str = "/tasks",
    hidden: dict[str, str] | None = None,
) -> Response:
    """The dry run's table of each plan; with ``action``, the form that assigns it."""
    return render(
        request,
        "assign_preview.html",
        actor,
        target=target,
        plans=plans,
        base=base,
        apps=apps or [],
        action=action,
        back=back,
        hidden=hidden or {},
    )


@router.post("/cvds/{ref}/assign/preview")
@router.post("/cvds/{ref}/assign")
def assign(
    request: Request,
    ctx: Ctx,
    actor: Actor,
    ref: str,
    base: Annotated[str, Form()] = "",
    apps: Annotated[list[str] | None, Form()] = None,
) -> Response:
    """The dry run (``…/preview``): its table and the form that assigns it; then the assignment."""
    dry_run = request.url.path.endswith("/preview")
    cvd = fleet.show_cvd(ctx.engine, actor, ref)
    plans, chosen = assign_plans(ctx, actor, [cvd.id], base, apps, dry_run)
    where = f"/cvds/{cvd.id}"
    if dry_run:
        return plan_page(request, actor, cvd.name, plans, base, chosen, f"{where}/assign", where)
    if plans[0].task:
        return see_other(f"/tasks/{plans[0].task}")
    return plan_page(request, actor, cvd.name, plans, base, chosen, back=where)


# --- the file portal ----------------------------------------------------------------
@router.get("/cvds/{ref}/files")
def files(request: Request, ctx: Ctx, actor: Actor, ref: str, at: At) -> Response:
    cvd = fleet.show_cvd(ctx.engine, actor, ref)
    snaps = list(reversed(cvd_ops.list_snapshots(ctx.engine, ctx.store, actor, cvd.id)))
    if not snaps:
        return render(request, "files.html", actor, cvd=cvd, snaps=[])
    folder = Place(cvd_ops.snapshot_of(ctx.store, cvd.id, at.snapshot).id, at.path.strip("/"))
    entries = cvd_ops.browse(ctx.engine, ctx.store, actor, cvd.id, folder.snapshot, folder.path)
    entries.sort(key=lambda e: (e.type != "dir", e.name))
    return render(
        request,
        "files.html",
        actor,
        cvd=cvd,
        snaps=snaps,
        folder=folder,
        entries=entries,
        content_perm=cvd_ops.DATA_READ,
    )


def _attachment(name: str) -> str:
    return f"attachment; filename*=UTF-8''{quote(name, safe='')}"


@router.get("/cvds/{ref}/files/download")
def download(ctx: Ctx, actor: Actor, ref: str, snapshot: str, path: str) -> Response:
    entry = cvd_ops.file_entry(ctx.engine, ctx.store, actor, ref, snapshot, path)
    return StreamingResponse(
        portal.content(ctx.store, entry),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(entry.size),
            "Content-Disposition": _attachment(os.fsdecode(entry.name)),
        },
    )


@router.get("/cvds/{ref}/files/archive")
def download_folder(
    ctx: Ctx, actor: Actor, ref: str, snapshot: str, path: str = "", format: str = "tar"
) -> Response:
    if format not in ("tar", "zip"):
        raise UsageError("format is tar or zip")
    # data.read checked and the download audited as the API's restore-as-download does
    snap = cvd_ops.start_download(
        ctx.engine, ctx.store, actor, ref, snapshot, [path] if path.strip("/") else []
    )
    entries = portal.folder(ctx.engine, ctx.store, actor, ref, snap.id, path)
    name = (path.strip("/").rsplit("/", 1)[-1] or "snapshot") + f".{format}"
    stream = archive.tar_stream if format == "tar" else archive.zip_stream
    return StreamingResponse(
        stream(entries, lambda e: portal.content(ctx.store, e)),
        media_type="application/x-tar" if format == "tar" else "application/zip",
        headers={"Content-Disposition": _attachment(name)},
    )
