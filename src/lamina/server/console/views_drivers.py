"""The driver library: packs (import a tar, show, delete) and profiles (create, edit, test, delete).

Each view calls the function the API's ``/api/v1/drivers`` and ``/driver-profiles``
routes call (``services.drivers``); a delete goes through a confirmation page first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile

from lamina.server.console import web
from lamina.server.console.forms import Name, Notes, lines
from lamina.server.console.web import Actor, ConsoleRoute, Ctx, render, see_other
from lamina.server.services import drivers

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
#: As the API's ``DriverProfileCreate`` has it.
PROFILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"


web.add_page(
    router, "/drivers", "drivers.html", packs=drivers.list_packs, profiles=drivers.list_profiles
)


@router.post("/drivers/import")
def pack_import(
    ctx: Ctx,
    actor: Actor,
    name: Name,
    archive: Annotated[UploadFile, File()],
    notes: Notes = "",
) -> Response:
    actor.require("driver.write")  # before reading the upload
    pack = drivers.import_pack(ctx.engine, ctx.store, actor, name.strip(), archive.file, notes)
    return see_other(f"/drivers/packs/{pack.id}")


web.add_page(router, "/drivers/packs/{ref}", "driver_pack.html", pack=drivers.show_pack)


@dataclass(frozen=True)
class ProfileFields:
    """A driver profile form's fields (new or edited): its packs and match globs, one a line."""

    packs: list[str]
    matches: list[str]
    os_family: str
    notes: str


def _profile_fields(
    packs: Annotated[str, Form(max_length=8000)],
    matches: Annotated[str, Form(max_length=8000)],
    os_family: Annotated[str, Form(max_length=64)] = "",
    notes: Notes = "",
) -> ProfileFields:
    return ProfileFields(lines(packs), lines(matches), os_family, notes)


ProfileForm = Annotated[ProfileFields, Depends(_profile_fields)]


@router.post("/drivers/profiles")
def profile_create(
    ctx: Ctx,
    actor: Actor,
    name: Annotated[str, Form(min_length=1, max_length=128, pattern=PROFILE_NAME)],
    f: ProfileForm,
) -> Response:
    p = drivers.create_profile(
        ctx.engine, actor, name.strip(), f.packs, f.matches, f.os_family or None, f.notes
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
def profile_update(ctx: Ctx, actor: Actor, ref: str, f: ProfileForm) -> Response:
    p = drivers.update_profile(ctx.engine, actor, ref, f.packs, f.matches, f.os_family, f.notes)
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
    web.Deletion("/drivers/packs", "driver pack", "driver.write", drivers.show_pack,
                 drivers.delete_pack, PACK_GONE, "/drivers"),
    web.Deletion("/drivers/profiles", "driver profile", "driver.write", drivers.show_profile,
                 drivers.delete_profile, PROFILE_GONE, "/drivers"),
):  # fmt: skip
    web.add_deletion(router, _gone)
