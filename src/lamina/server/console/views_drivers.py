"""The driver library: packs (import a tar, show, delete) and profiles (create, edit, test, delete).

Each view calls the function the API's ``/api/v1/drivers`` and ``/driver-profiles``
routes call (``services.drivers``); a delete goes through a confirmation page first.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, Response, UploadFile

from lamina.server.console.web import (
    Actor,
    ConsoleRoute,
    Ctx,
    Deletion,
    add_deletion,
    render,
    see_other,
)
from lamina.server.services import drivers

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
#: As the API's ``DriverProfileCreate`` has it.
PROFILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"


def lines(text: str) -> list[str]:
    """A textarea's non-empty lines (commas also separate), stripped."""
    return [x.strip() for x in text.replace(",", "\n").splitlines() if x.strip()]


@router.get("/drivers")
def driver_library(request: Request, ctx: Ctx, actor: Actor) -> Response:
    return render(
        request,
        "drivers.html",
        actor,
        packs=drivers.list_packs(ctx.engine, actor),
        profiles=drivers.list_profiles(ctx.engine, actor),
    )


@router.post("/drivers/import")
def pack_import(
    ctx: Ctx,
    actor: Actor,
    name: Annotated[str, Form(min_length=1, max_length=128)],
    archive: Annotated[UploadFile, File()],
    notes: Annotated[str, Form(max_length=4000)] = "",
) -> Response:
    actor.require("driver.write")  # before reading the upload
    pack = drivers.import_pack(ctx.engine, ctx.store, actor, name.strip(), archive.file, notes)
    return see_other(f"/drivers/packs/{pack.id}")


@router.get("/drivers/packs/{ref}")
def pack_page(request: Request, ctx: Ctx, actor: Actor, ref: str) -> Response:
    return render(
        request, "driver_pack.html", actor, pack=drivers.show_pack(ctx.engine, actor, ref)
    )


@router.post("/drivers/profiles")
def profile_create(
    ctx: Ctx,
    actor: Actor,
    name: Annotated[str, Form(min_length=1, max_length=128, pattern=PROFILE_NAME)],
    packs: Annotated[str, Form(max_length=8000)],
    matches: Annotated[str, Form(max_length=8000)],
    os_family: Annotated[str, Form(max_length=64)] = "",
    notes: Annotated[str, Form(max_length=4000)] = "",
) -> Response:
    p = drivers.create_profile(
        ctx.engine, actor, name.strip(), lines(packs), lines(matches), os_family or None, notes
    )
    return see_other(f"/drivers/profiles/{p.id}")


@router.get("/drivers/profiles/{ref}")
def profile_page(request: Request, ctx: Ctx, actor: Actor, ref: str, test: str = "") -> Response:
    profile = drivers.show_profile(ctx.engine, actor, ref)
    return render(
        request,
        "driver_profile.html",
        actor,
        profile=profile,
        matched=drivers.test_profile(ctx.engine, actor, profile.id) if test else None,
    )


@router.post("/drivers/profiles/{ref}")
def profile_update(
    ctx: Ctx,
    actor: Actor,
    ref: str,
    packs: Annotated[str, Form(max_length=8000)],
    matches: Annotated[str, Form(max_length=8000)],
    os_family: Annotated[str, Form(max_length=64)] = "",
    notes: Annotated[str, Form(max_length=4000)] = "",
) -> Response:
    p = drivers.update_profile(
        ctx.engine, actor, ref, lines(packs), lines(matches), os_family, notes
    )
    return see_other(f"/drivers/profiles/{p.id}")


PACK_GONE = (
    "The driver pack {name} and its {count} version(s) are deleted. This is refused while a "
    "profile names the pack or an endpoint runs it."
)
PROFILE_GONE = (
    "The profile {name} is deleted: machines it matches get no driver pack from it at their "
    "next migration or provisioning. The packs themselves stay."
)
for _gone in (
    Deletion("/drivers/packs", "driver pack", "driver.write", drivers.show_pack,
             drivers.delete_pack, PACK_GONE, "/drivers"),
    Deletion("/drivers/profiles", "driver profile", "driver.write", drivers.show_profile,
             drivers.delete_profile, PROFILE_GONE, "/drivers"),
):  # fmt: skip
    add_deletion(router, _gone)
