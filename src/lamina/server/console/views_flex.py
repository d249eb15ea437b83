"""Flex: images (register by URL, versions, delete), restriction policies, entitlements,
instances (lock, unlock, revoke with a message for the user; policy override) and user groups.

Each view calls the function the API's ``/api/v1/flex/*`` and ``/groups`` routes call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Request, Response

from lamina.errors import NotFoundError, UsageError
from lamina.protocol.flex import (
    FlexEntitle,
    FlexEntitlementUpdate,
    FlexPolicyCreate,
    FlexPolicyUpdate,
    FlexRegisterUrl,
    GroupCreate,
)
from lamina.server.console.forms import Check, Message, Name, Names, Ref, lines
from lamina.server.console.web import (
    Actor,
    ConsoleRoute,
    Ctx,
    Deletion,
    add_deletion,
    add_page,
    confirm_page,
    render,
    see_other,
)
from lamina.server.services import flex, flex_images, flex_policies, groups
from lamina.server.services import policies as cvd_policies

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
DAY = 86400
#: Instances listed per page (a large site has thousands).
INSTANCE_PAGE = 200
#: The instance actions: the state each sets and its button.
STATES = {
    "lock": (flex.LOCKED, "Lock"),
    "unlock": (flex.ACTIVE, "Unlock"),
    "revoke": (flex.REVOKED, "Revoke"),
}
#: An image in an entitlement's form: ``NAME`` or ``NAME:VERSION``.
ImageRef = Annotated[str, Form(min_length=1, max_length=140)]


# --- images -----------------------------------------------------------------------------
add_page(router, "/flex", "flex_images.html", images=flex_images.list_images)


@router.post("/flex/images")
def image_register(
    ctx: Ctx,
    actor: Actor,
    name: Name,
    url: Annotated[str, Form()],
    sha256: Annotated[str, Form()],
    memory_mib: Annotated[int, Form()] = 1024,
    cpus: Annotated[int, Form()] = 1,
    firmware: Annotated[Literal["bios", "uefi"], Form()] = "bios",
) -> Response:
    """The API's register-by-URL: the server fetches the image and checks its SHA-256."""
    actor.require("flex.admin")
    req = FlexRegisterUrl(
        url=url.strip(), sha256=sha256.strip(), memory_mib=memory_mib, cpus=cpus, firmware=firmware
    )
    img = flex_images.register_url(
        ctx.engine, ctx.store, actor, ctx.settings.data, name.strip(), req
    )
    return see_other(f"/flex/images/{img.id}")


add_page(router, "/flex/images/{ref}", "flex_image.html", image=flex_images.show_image)


# --- policies ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyFields:
    """A flex policy form's fields (new or edited): its restrictions and its times."""

    restrictions: dict[str, Any]
    valid_days: int | None
    lease_days: int


def _policy_fields(
    usb: Annotated[str, Form()] = "none",
    shared_folder: Annotated[str, Form()] = "off",
    network: Annotated[str, Form()] = "nat",
    message: Message = "",
    max_password_tries: Annotated[int, Form()] = 3,
    valid_days: Annotated[int | None, Form()] = None,
    lease_days: Annotated[int, Form()] = 7,
    clipboard: Check = "",
    drag_drop: Check = "",
) -> PolicyFields:
    restrictions = {
        "clipboard": bool(clipboard),
        "drag_drop": bool(drag_drop),
        "usb": usb,
        "shared_folder": shared_folder,
        "network": network,
        "message": message.strip(),
        "max_password_tries": max_password_tries,
    }
    return PolicyFields(restrictions, valid_days, lease_days)


PolicyForm = Annotated[PolicyFields, Depends(_policy_fields)]


add_page(router, "/flex/policies", "flex_policies.html", policies=flex_policies.list_policies)


@router.post("/flex/policies")
def policy_create(ctx: Ctx, actor: Actor, name: Name, f: PolicyForm) -> Response:
    req = FlexPolicyCreate(
        name=name.strip(),
        restrictions=f.restrictions,
        valid_for=f.valid_days * DAY if f.valid_days else None,
        lease_seconds=f.lease_days * DAY,
    )
    p = flex_policies.create_policy(ctx.engine, actor, req)
    return see_other(f"/flex/policies/{p.id}")


add_page(router, "/flex/policies/{ref}", "flex_policy.html", policy=flex_policies.show_policy)


@router.post("/flex/policies/{ref}")
def policy_update(ctx: Ctx, actor: Actor, ref: str, f: PolicyForm) -> Response:
    req = FlexPolicyUpdate(
        restrictions=f.restrictions,
        valid_for=f.valid_days * DAY if f.valid_days else None,
        no_expiry=not f.valid_days,
        lease_seconds=f.lease_days * DAY,
    )
    p = flex_policies.update_policy(ctx.engine, actor, ref, req)
    return see_other(f"/flex/policies/{p.id}")


# --- entitlements -----------------------------------------------------------------------
@router.get("/flex/entitlements")
def entitlement_list(request: Request, ctx: Ctx, actor: Actor) -> Response:
    admin = "flex.admin" in actor.permissions
    return render(
        request,
        "flex_entitlements.html",
        actor,
        entitlements=flex.list_entitlements(ctx.engine, actor),
        images=flex_images.list_images(ctx.engine, actor) if admin else [],
        policies=flex_policies.list_policies(ctx.engine, actor) if admin else [],
        cvd_policies=cvd_policies.list_policies(ctx.engine, actor) if admin else [],
    )


@router.post("/flex/entitlements")
def entitlement_create(
    ctx: Ctx,
    actor: Actor,
    name: Name,
    image: ImageRef,
    policy: Name,
    users: Names = "",
    groups: Names = "",
    manage: Check = "",
    cvd_policy: Annotated[str, Form(max_length=128)] = "",
    base: Ref = "",
) -> Response:
    req = FlexEntitle(
        name=name.strip(),
        image=image.strip(),
        policy=policy.strip(),
        users=lines(users),
        groups=lines(groups),
        manage=bool(manage),
        cvd_policy=cvd_policy.strip() or None,
        base=base.strip() or None,
    )
    flex.entitle(ctx.engine, actor, req)
    return see_other("/flex/entitlements")


def _holders_form(users: Names = "", groups: Names = "") -> FlexEntitlementUpdate:
    """An entitlement's users and groups, as the API's update that replaces them."""
    return FlexEntitlementUpdate(users=lines(users), groups=lines(groups))


@router.post("/flex/entitlements/{ref}")
def entitlement_update(
    ctx: Ctx, actor: Actor, ref: str, req: Annotated[FlexEntitlementUpdate, Depends(_holders_form)]
) -> Response:
    flex.update_entitlement(ctx.engine, actor, ref, req)
    return see_other("/flex/entitlements")


@router.get("/flex/entitlements/{ref}/change")
def entitlement_change_form(request: Request, ctx: Ctx, actor: Actor, ref: str) -> Response:
    """Change an entitlement's image (and version) or flex policy: the form says what follows."""
    actor.require("flex.admin")
    return render(
        request,
        "flex_entitlement_change.html",
        actor,
        e=flex.show_entitlement(ctx.engine, actor, ref),
        images=flex_images.list_images(ctx.engine, actor),
        policies=flex_policies.list_policies(ctx.engine, actor),
    )


@router.post("/flex/entitlements/{ref}/change")
def entitlement_change(ctx: Ctx, actor: Actor, ref: str, image: ImageRef, policy: Name) -> Response:
    """The API's ``PUT /flex/entitlements/{name}`` with ``image`` and ``policy``."""
    req = FlexEntitlementUpdate(image=image.strip(), policy=policy.strip())
    flex.update_entitlement(ctx.engine, actor, ref, req)
    return see_other("/flex/entitlements")


# --- instances --------------------------------------------------------------------------
@router.get("/flex/instances")
def instance_list(request: Request, ctx: Ctx, actor: Actor, page: int = 1) -> Response:
    if page < 1:
        raise UsageError("page must be 1 or more")
    rows = flex.list_instances(ctx.engine, actor, INSTANCE_PAGE + 1, (page - 1) * INSTANCE_PAGE)
    return render(
        request,
        "flex_instances.html",
        actor,
        instances=rows[:INSTANCE_PAGE],
        page=page,
        more=len(rows) > INSTANCE_PAGE,
    )


@router.get("/flex/instances/{ref}/{action}")
def instance_confirm(request: Request, ctx: Ctx, actor: Actor, ref: str, action: str) -> Response:
    if action not in (*STATES, "policy"):
        raise NotFoundError(f"no flex instance action {action!r}")
    actor.require("flex.operate")
    i = flex.show_instance(ctx.engine, actor, ref)
    if action == "policy":
        whose = "its own" if i.policy_override else "its entitlement's"
        return confirm_page(
            request,
            actor,
            title=f"Policy of instance {i.id[:8]} of {i.user}",
            what=f"The {i.image} instance of {i.user} runs under {i.policy} ({whose}). "
            "The policy chosen below reaches the laptop at its next check-in.",
            action=f"/flex/instances/{i.id}/policy",
            button="Set policy",
            back="/flex/instances",
            kind="flex-policy",
            policies=flex_policies.list_policies(ctx.engine, actor),
            current=i.policy if i.policy_override else "",
        )
    what = {
        "lock": "refuses to start from its next check-in on",
        "unlock": "may start again from its next check-in on",
        "revoke": "is deleted from the laptop at its next check-in, for good",
    }[action]
    return confirm_page(
        request,
        actor,
        title=f"{STATES[action][1]} instance {i.id[:8]} of {i.user}",
        what=f"The {i.image} instance of {i.user} {what}. The message below is shown to them.",
        action=f"/flex/instances/{i.id}/{action}",
        button=STATES[action][1],
        back="/flex/instances",
        kind="message",
    )


@router.post("/flex/instances/{ref}/{action}")
def instance_action(
    ctx: Ctx,
    actor: Actor,
    ref: str,
    action: str,
    message: Message = "",
    policy: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    if action == "policy":
        flex.set_instance_policy(ctx.engine, actor, ref, policy.strip() or None)
    elif action in STATES:
        flex.set_state(ctx.engine, actor, ref, STATES[action][0], message.strip())
    else:
        raise NotFoundError(f"no flex instance action {action!r}")
    return see_other("/flex/instances")


# --- groups -----------------------------------------------------------------------------
add_page(router, "/groups", "groups.html", groups=groups.list_groups)


@router.post("/groups")
def group_create(ctx: Ctx, actor: Actor, name: Name, members: Names = "") -> Response:
    groups.create_group(ctx.engine, actor, GroupCreate(name=name.strip(), members=lines(members)))
    return see_other("/groups")


@router.post("/groups/{name}/members")
def group_members(
    ctx: Ctx,
    actor: Actor,
    name: str,
    add: Names = "",
    remove: Names = "",
) -> Response:
    if lines(add):
        groups.add_members(ctx.engine, actor, name, lines(add))
    if lines(remove):
        groups.remove_members(ctx.engine, actor, name, lines(remove))
    return see_other("/groups")


IMAGE_GONE = (
    "The image {name} and its {count} version(s) are deleted from the server. This is refused "
    "while an entitlement names it."
)
POLICY_GONE = (
    "The flex policy {name} is deleted. This is refused while an entitlement or an instance "
    "uses it."
)
ENTITLEMENT_GONE = (
    "The entitlement {name} is deleted: its users can no longer create an instance of {image}. "
    "This is refused while one of its instances is not revoked."
)
GROUP_GONE = (
    "The group {name} is deleted; its {count} member(s) stay as users but lose what was "
    "granted to the group."
)
for _gone in (
    Deletion("/flex/images", "flex image", "flex.admin", flex_images.show_image,
             flex_images.delete_image, IMAGE_GONE, "/flex", with_store=True),
    Deletion("/flex/policies", "flex policy", "flex.admin", flex_policies.show_policy,
             flex_policies.delete_policy, POLICY_GONE, "/flex/policies"),
    Deletion("/flex/entitlements", "entitlement", "flex.admin", flex.show_entitlement,
             flex.delete_entitlement, ENTITLEMENT_GONE, "/flex/entitlements", back_to_page=False),
    Deletion("/groups", "group", "user.admin", groups.show_group, groups.delete_group,
             GROUP_GONE, "/groups", key="name", back_to_page=False),
):  # fmt: skip
    add_deletion(router, _gone)
