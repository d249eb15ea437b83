"""Managed flex guests: a device enrolling with a flex instance's token *is* that instance.

Every instance of an image starts from the same disk (same machine-id, same hostname),
so a managed guest's identity is its instance: the token is bound to it, the device row
is new for each enrollment (devices are keyed by a fresh id, never by machine-id), and its
CVD is named after the instance, so two instances never collide.

Ending an instance (``end_instance``: revoked by an administrator, its entitlement
withdrawn, its user deleted) ends its guest too: the enrollment token its lease carried
and the device it enrolled as are revoked in the same transaction. A guest's credential
is on a disk its user holds; it must not outlive the user's right to the image.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, Select, or_, select, update

from lamina.db.models import (
    devices,
    enroll_tokens,
    flex_entitlement_subjects,
    flex_entitlements,
    flex_instances,
    flex_policies,
    user_group_members,
    users,
)
from lamina.server.services.common import audit, aware, now
from lamina.server.services.flex_policies import policy_doc
from lamina.server.services.rows import FlexPolicy

#: An instance's states (``flex_instances.state``).
ACTIVE, LOCKED, REVOKED = "active", "locked", "revoked"


def bind_device(c: Connection, token_id: str, device_id: str) -> str | None:
    """If ``token_id`` is a flex instance's enrollment token, record ``device_id`` as that
    instance's device and return the CVD name for it (``flex-<user>-<instance>``)."""
    r = c.execute(
        select(flex_instances.c.id, users.c.name)
        .join(users, users.c.id == flex_instances.c.user_id)
        .where(flex_instances.c.enroll_token_id == token_id)
    ).first()
    if r is None:
        return None
    c.execute(update(flex_instances).where(flex_instances.c.id == r.id).values(device_id=device_id))
    return f"flex-{r.name}-{r.id[:8]}"


def entitlement_ids(user_id: str) -> Select[Any]:
    """The ids of the entitlements naming the user, directly or through a group of theirs."""
    groups = select(user_group_members.c.group_id).where(user_group_members.c.user_id == user_id)
    return select(flex_entitlement_subjects.c.entitlement_id).where(
        or_(
            (flex_entitlement_subjects.c.kind == "user")
            & (flex_entitlement_subjects.c.subject_id == user_id),
            (flex_entitlement_subjects.c.kind == "group")
            & flex_entitlement_subjects.c.subject_id.in_(groups),
        )
    )


def held_entitlements(c: Connection, user_id: str) -> set[str]:
    return {str(i) for i in c.execute(entitlement_ids(user_id)).scalars()}


def entitled(c: Connection, user_id: str, entitlement_id: str) -> bool:
    return entitlement_id in held_entitlements(c, user_id)


def revoke_token(c: Connection, token_id: str) -> None:
    """Revoke an instance's enrollment token (a managed guest's), if it is not already."""
    c.execute(
        update(enroll_tokens)
        .where(enroll_tokens.c.id == token_id, enroll_tokens.c.revoked.is_(None))
        .values(revoked=now())
    )


def end_guest(c: Connection, token_id: str | None, device_id: str | None) -> None:
    """Revoke a managed guest's enrollment token and the device it enrolled as (a device
    revoked, rejected or archived already stays as it is)."""
    if token_id:
        revoke_token(c, token_id)
    if device_id:
        c.execute(
            update(devices)
            .where(devices.c.id == device_id, devices.c.status.in_(("pending", "active")))
            .values(status="revoked")
        )


def end_instance(c: Connection, actor: str, instance_id: str, message: str, why: str) -> None:
    """Revoke an instance that is not revoked yet, with its guest (``end_guest``); the
    laptop deletes its key and disk at its next check-in."""
    r = c.execute(
        select(flex_instances, users.c.name.label("user"))
        .join(users, users.c.id == flex_instances.c.user_id)
        .where(flex_instances.c.id == instance_id)
    ).one()
    if r.state == REVOKED:
        return
    c.execute(
        update(flex_instances)
        .where(flex_instances.c.id == r.id)
        .values(state=REVOKED, message=message)
    )
    end_guest(c, r.enroll_token_id, r.device_id)
    audit(
        c, actor, "flex.instance.revoke", r.id, user=r.user, was=r.state, why=why, message=message
    )


#: The message a laptop shows when its user is no longer entitled to the image.
WITHDRAWN = "you are no longer entitled to this image"


def end_unentitled(c: Connection, actor: str) -> int:
    """End every instance (not revoked yet) whose user no longer holds its entitlement
    (a group or the entitlement's subjects changed); returns how many."""
    live = c.execute(
        select(
            flex_instances.c.id, flex_instances.c.user_id, flex_instances.c.entitlement_id
        ).where(flex_instances.c.state != REVOKED)
    ).all()
    held: dict[str, set[str]] = {}
    ended = 0
    for r in live:
        if r.user_id not in held:
            held[r.user_id] = held_entitlements(c, r.user_id)
        if r.entitlement_id not in held[r.user_id]:
            end_instance(c, actor, r.id, WITHDRAWN, "entitlement withdrawn")
            ended += 1
    return ended


def end_users_instances(c: Connection, actor: str, user_id: str, why: str) -> None:
    """End every instance of a user (deleted: their instances go with them, their guests
    must not stay)."""
    for iid in c.execute(
        select(flex_instances.c.id).where(flex_instances.c.user_id == user_id)
    ).scalars():
        end_instance(c, actor, iid, why, why)


def refusal(c: Connection, instance_id: str) -> str | None:
    """Why instance ``instance_id`` may serve nothing now (its image, its guest's
    enrollment), or None when it may: it is active, its user is enabled and still holds
    its entitlement, and its policy has not expired."""
    r = c.execute(
        select(flex_instances, users.c.disabled)
        .join(users, users.c.id == flex_instances.c.user_id)
        .where(flex_instances.c.id == instance_id)
    ).one()
    if r.state != ACTIVE:
        return f"flex instance {r.id} is {r.state}: {r.message or 'ask your administrator'}"
    if r.disabled:
        return f"flex instance {r.id}: its user is disabled"
    if not entitled(c, r.user_id, r.entitlement_id):
        return f"flex instance {r.id}: {WITHDRAWN}"
    e = c.execute(
        select(flex_entitlements.c.policy_id).where(flex_entitlements.c.id == r.entitlement_id)
    ).one()
    return expired(policy_of(c, r.policy_id, e.policy_id), r.created)


def policy_of(c: Connection, own: str | None, entitlement_policy: str) -> FlexPolicy:
    """An instance's policy: its own override, else its entitlement's."""
    return c.execute(
        select(flex_policies).where(flex_policies.c.id == (own or entitlement_policy))
    ).one()


def expired(p: FlexPolicy, created: dt.datetime | None) -> str | None:
    """What to say when policy ``p`` has expired for an instance made at ``created`` (one
    not made yet: None), else None."""
    until = policy_doc(p, aware(created)).expires_at
    if until is not None and until <= now():
        return f"the flex policy {p.name} expired at {until:%Y-%m-%d %H:%M} UTC"
    return None
