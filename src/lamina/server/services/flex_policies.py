"""Flex restriction policies: what an instance's VM may do, its expiry and its offline lease.

A policy is read at every lease (``flex.checkin``), so an edit reaches every instance at its
next check-in.
"""

from __future__ import annotations

import datetime as dt

from pydantic import ValidationError
from sqlalchemy import Column, Connection, Engine, delete, insert, select, update

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import flex_entitlements, flex_instances, flex_policies
from lamina.errors import ConflictError, UsageError
from lamina.protocol.flex import (
    FlexPolicyCreate,
    FlexPolicyDoc,
    FlexPolicyPublic,
    FlexPolicyUpdate,
    FlexRestrictions,
)
from lamina.server.security import Principal
from lamina.server.services.common import audit, aware, find_one, new_id, now
from lamina.server.services.rows import FlexPolicy, JsonObject


def _restrictions(base: JsonObject, change: JsonObject) -> JsonObject:
    unknown = sorted(set(change) - set(FlexRestrictions.model_fields))
    if unknown:
        raise UsageError(f"unknown restriction {unknown[0]!r}")
    try:
        return FlexRestrictions.model_validate({**base, **change}).model_dump(mode="json")
    except ValidationError as e:
        err = e.errors()[0]
        raise UsageError(f"restriction {'.'.join(map(str, err['loc']))}: {err['msg']}") from e


def find_policy(c: Connection, ref: str) -> FlexPolicy:
    return find_one(c, flex_policies, ref, "name", "flex policy")


def _expiry(p: FlexPolicy, created: dt.datetime | None) -> dt.datetime | None:
    """A policy's expiry for an instance created at ``created`` (now, for one not made yet)."""
    if p.expires_at is not None:
        return aware(p.expires_at)
    if p.valid_for is not None:
        return (created or now()) + dt.timedelta(seconds=p.valid_for)
    return None


def policy_doc(p: FlexPolicy, created: dt.datetime | None = None) -> FlexPolicyDoc:
    return FlexPolicyDoc(
        name=p.name,
        restrictions=FlexRestrictions.model_validate(p.restrictions),
        expires_at=_expiry(p, created),
        lease_seconds=p.lease_seconds,
    )


def _policy_public(p: FlexPolicy) -> FlexPolicyPublic:
    return FlexPolicyPublic(
        id=p.id,
        name=p.name,
        restrictions=p.restrictions,
        expires_at=aware(p.expires_at),
        valid_for=p.valid_for,
        lease_seconds=p.lease_seconds,
        created=aware(p.created),
        updated=aware(p.updated),
    )


def create_policy(engine: Engine, actor: Principal, req: FlexPolicyCreate) -> FlexPolicyPublic:
    actor.require("flex.admin")
    if req.expires_at is not None and req.valid_for is not None:
        raise UsageError("give an expiry date or a validity, not both")
    with write_tx(engine) as c:
        if c.execute(select(flex_policies.c.id).where(flex_policies.c.name == req.name)).first():
            raise ConflictError(f"flex policy {req.name!r} exists already")
        pid = new_id()
        c.execute(
            insert(flex_policies).values(
                id=pid,
                name=req.name,
                restrictions=_restrictions({}, req.restrictions),
                expires_at=req.expires_at,
                valid_for=req.valid_for,
                lease_seconds=req.lease_seconds,
                created=now(),
                updated=now(),
            )
        )
        p = find_policy(c, pid)
        audit(c, actor.name, "flex.policy.create", pid, **req.model_dump(mode="json"))
        return _policy_public(p)


def update_policy(
    engine: Engine, actor: Principal, ref: str, req: FlexPolicyUpdate
) -> FlexPolicyPublic:
    """Change a policy; every instance using it gets the change at its next check-in."""
    actor.require("flex.admin")
    if sum(x for x in (req.expires_at is not None, req.valid_for is not None, req.no_expiry)) > 1:
        raise UsageError("give one of an expiry date, a validity or no expiry")
    with write_tx(engine) as c:
        p = find_policy(c, ref)
        values: JsonObject = {
            "restrictions": _restrictions(p.restrictions, req.restrictions),
            "updated": now(),
        }
        if req.expires_at is not None or req.valid_for is not None or req.no_expiry:
            values["expires_at"] = req.expires_at
            values["valid_for"] = req.valid_for
        if req.lease_seconds is not None:
            values["lease_seconds"] = req.lease_seconds
        c.execute(update(flex_policies).where(flex_policies.c.id == p.id).values(**values))
        audit(
            c,
            actor.name,
            "flex.policy.update",
            p.id,
            name=p.name,
            **req.model_dump(mode="json", exclude_defaults=True),
        )
        return _policy_public(find_policy(c, p.id))


def list_policies(engine: Engine, actor: Principal) -> list[FlexPolicyPublic]:
    actor.require("read")
    with read_tx(engine) as c:
        return [
            _policy_public(p)
            for p in c.execute(select(flex_policies).order_by(flex_policies.c.name))
        ]


def entitlement_naming(c: Connection, column: Column[str], value: str) -> str | None:
    """The name of an entitlement whose ``column`` is ``value`` (the image or the policy
    it uses, which is not deleted while it does), if there is one."""
    return c.execute(select(flex_entitlements.c.name).where(column == value).limit(1)).scalar()


def show_policy(engine: Engine, actor: Principal, ref: str) -> FlexPolicyPublic:
    actor.require("read")
    with read_tx(engine) as c:
        return _policy_public(find_policy(c, ref))


def delete_policy(engine: Engine, actor: Principal, ref: str) -> None:
    actor.require("flex.admin")
    with write_tx(engine) as c:
        p = find_policy(c, ref)
        used = entitlement_naming(c, flex_entitlements.c.policy_id, p.id)
        over = c.execute(
            select(flex_instances.c.id).where(flex_instances.c.policy_id == p.id)
        ).scalar()
        if used is not None or over is not None:
            what = f"entitlement {used}" if used is not None else f"instance {over}"
            raise ConflictError(f"flex policy {p.name} is used by {what}")
        c.execute(delete(flex_policies).where(flex_policies.c.id == p.id))
        audit(c, actor.name, "flex.policy.delete", p.id, name=p.name)
