"""Flex entitlements (who may run which image, under which policy) and the instances as an
administrator sees and steers them: lock, unlock, revoke, a policy of their own.

An instance's effective policy is its own override, else its entitlement's.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Connection, Engine, delete, func, insert, select, update

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import (
    flex_entitlement_subjects,
    flex_entitlements,
    flex_image_versions,
    flex_images,
    flex_instances,
    flex_policies,
    layers,
    policies,
    user_groups,
    users,
)
from lamina.errors import ConflictError, NotFoundError, UsageError
from lamina.protocol.flex import (
    FlexEntitle,
    FlexEntitlementPublic,
    FlexEntitlementUpdate,
    FlexInstancePublic,
)
from lamina.server.security import Principal
from lamina.server.services import flex_images as images
from lamina.server.services import flex_manage
from lamina.server.services import policies as cvd_policies
from lamina.server.services.common import audit, aware, find_one, from_row, new_id, now
from lamina.server.services.flex_policies import find_policy
from lamina.server.services.groups import find_group, user_ids
from lamina.server.services.rows import FlexEntitlement, FlexImage, FlexInstanceView

ACTIVE, LOCKED, REVOKED = flex_manage.ACTIVE, flex_manage.LOCKED, flex_manage.REVOKED


# --- entitlements ------------------------------------------------------------------------
def find_entitlement(c: Connection, ref: str) -> FlexEntitlement:
    return find_one(c, flex_entitlements, ref, "name", "entitlement")


def _image_spec(c: Connection, spec: str) -> tuple[FlexImage, int | None]:
    name, _, ver = spec.partition(":")
    if ver and not ver.isdigit():
        raise UsageError(f"image version in {spec!r} must be a number")
    img = images.find_image(c, name)
    version = int(ver) if ver else None
    images.find_version(c, img, version)  # it must exist
    return img, version


def _subjects(c: Connection, users_: list[str], groups_: list[str]) -> list[tuple[str, str]]:
    ids = user_ids(c, users_)
    return [("user", ids[u]) for u in dict.fromkeys(users_)] + [
        ("group", find_group(c, g).id) for g in dict.fromkeys(groups_)
    ]


def _set_subjects(c: Connection, eid: str, subjects: list[tuple[str, str]]) -> None:
    c.execute(
        delete(flex_entitlement_subjects).where(flex_entitlement_subjects.c.entitlement_id == eid)
    )
    for kind, sid in dict.fromkeys(subjects):
        c.execute(
            insert(flex_entitlement_subjects).values(entitlement_id=eid, kind=kind, subject_id=sid)
        )


def entitle(engine: Engine, actor: Principal, req: FlexEntitle) -> FlexEntitlementPublic:
    actor.require("flex.admin")
    if not (req.users or req.groups):
        raise UsageError("name at least one --user or --group")
    if req.manage and not req.cvd_policy:
        raise UsageError("--manage needs --cvd-policy (the CVD policy of the managed guests)")
    if not req.manage and (req.cvd_policy or req.base or req.apps):
        raise UsageError("--cvd-policy, --base and --app are for --manage")
    with write_tx(engine) as c:
        if c.execute(
            select(flex_entitlements.c.id).where(flex_entitlements.c.name == req.name)
        ).first():
            raise ConflictError(f"entitlement {req.name!r} exists already")
        img, version = _image_spec(c, req.image)
        p = find_policy(c, req.policy)
        cvd_policy = cvd_policies.find(c, req.cvd_policy).id if req.cvd_policy else None
        for spec in [req.base, *req.apps]:
            if spec:
                find_one(c, layers, spec.partition(":")[0], "name", "layer")
        eid = new_id()
        c.execute(
            insert(flex_entitlements).values(
                id=eid,
                name=req.name,
                image_id=img.id,
                version=version,
                policy_id=p.id,
                manage=req.manage,
                cvd_policy_id=cvd_policy,
                layers={"base": req.base, "apps": req.apps},
                created=now(),
            )
        )
        _set_subjects(c, eid, _subjects(c, req.users, req.groups))
        audit(c, actor.name, "flex.entitle", eid, **req.model_dump(mode="json"))
        return _entitlements_public(c, [find_entitlement(c, eid)])[0]


def update_entitlement(
    engine: Engine, actor: Principal, ref: str, req: FlexEntitlementUpdate
) -> FlexEntitlementPublic:
    actor.require("flex.admin")
    with write_tx(engine) as c:
        e = find_entitlement(c, ref)
        values: dict[str, str | int | None] = {}
        if req.image is not None:
            img, version = _image_spec(c, req.image)
            values |= {"image_id": img.id, "version": version}
        if req.policy is not None:
            values["policy_id"] = find_policy(c, req.policy).id
        if values:
            c.execute(
                update(flex_entitlements).where(flex_entitlements.c.id == e.id).values(**values)
            )
        if req.users is not None or req.groups is not None:
            old = _entitlements_public(c, [e])[0]
            subjects = _subjects(
                c,
                req.users if req.users is not None else old.users,
                req.groups if req.groups is not None else old.groups,
            )
            if not subjects:
                raise UsageError("an entitlement needs at least one user or group")
            _set_subjects(c, e.id, subjects)
            # instances of users it no longer names end now, with their guests
            flex_manage.end_unentitled(c, actor.name)
        audit(
            c,
            actor.name,
            "flex.entitlement.update",
            e.id,
            name=e.name,
            **req.model_dump(mode="json", exclude_none=True),
        )
        return _entitlements_public(c, [find_entitlement(c, e.id)])[0]


def _entitlements_public(c: Connection, rows: list[FlexEntitlement]) -> list[FlexEntitlementPublic]:
    """Entitlements with names resolved: a fixed number of queries, whatever the count."""
    ids = [e.id for e in rows]
    image_name = {r.id: r.name for r in c.execute(select(flex_images.c.id, flex_images.c.name))}
    pols = {r.id: r.name for r in c.execute(select(flex_policies.c.id, flex_policies.c.name))}
    uname = {r.id: r.name for r in c.execute(select(users.c.id, users.c.name))}
    gname = {r.id: r.name for r in c.execute(select(user_groups.c.id, user_groups.c.name))}
    subs: dict[str, dict[str, list[str]]] = {i: {"user": [], "group": []} for i in ids}
    for s in c.execute(
        select(flex_entitlement_subjects).where(flex_entitlement_subjects.c.entitlement_id.in_(ids))
    ):
        names = uname if s.kind == "user" else gname
        subs[s.entitlement_id][s.kind].append(names.get(s.subject_id, s.subject_id))
    cvd_pol = {r.id: r.name for r in c.execute(select(policies.c.id, policies.c.name))}
    return [
        FlexEntitlementPublic(
            id=e.id,
            name=e.name,
            image=image_name.get(e.image_id),
            version=e.version,
            policy=pols.get(e.policy_id),
            users=sorted(subs[e.id]["user"]),
            groups=sorted(subs[e.id]["group"]),
            manage=e.manage,
            cvd_policy=cvd_pol.get(e.cvd_policy_id) if e.cvd_policy_id else None,
            base=(e.layers or {}).get("base"),
            apps=(e.layers or {}).get("apps", []),
            created=aware(e.created),
        )
        for e in rows
    ]


def list_entitlements(engine: Engine, actor: Principal) -> list[FlexEntitlementPublic]:
    actor.require("read")
    with read_tx(engine) as c:
        rows: list[FlexEntitlement] = list(
            c.execute(select(flex_entitlements).order_by(flex_entitlements.c.name))
        )
        return _entitlements_public(c, rows)


def show_entitlement(engine: Engine, actor: Principal, ref: str) -> FlexEntitlementPublic:
    actor.require("read")
    with read_tx(engine) as c:
        return _entitlements_public(c, [find_entitlement(c, ref)])[0]


def delete_entitlement(engine: Engine, actor: Principal, ref: str) -> None:
    """Delete an entitlement whose instances are all revoked (revoke them first)."""
    actor.require("flex.admin")
    with write_tx(engine) as c:
        e = find_entitlement(c, ref)
        live = c.execute(
            select(flex_instances.c.id).where(
                flex_instances.c.entitlement_id == e.id, flex_instances.c.state != REVOKED
            )
        ).first()
        if live:
            raise ConflictError(
                f"entitlement {e.name} has instance {live.id} not revoked: revoke its instances first"
            )
        c.execute(delete(flex_entitlements).where(flex_entitlements.c.id == e.id))
        audit(c, actor.name, "flex.entitlement.delete", e.id, name=e.name)


# --- instances: the admin's view ----------------------------------------------------------
def instance_rows(
    c: Connection,
    where: ColumnElement[bool] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[FlexInstanceView]:
    """Instances joined with what their public form names: one query."""
    eff = flex_policies.alias("eff")
    q = (
        select(
            flex_instances,
            users.c.name.label("user"),
            flex_entitlements.c.name.label("entitlement"),
            flex_images.c.name.label("image"),
            flex_image_versions.c.version.label("version"),
            eff.c.name.label("policy"),
        )
        .join(users, users.c.id == flex_instances.c.user_id)
        .join(flex_entitlements, flex_entitlements.c.id == flex_instances.c.entitlement_id)
        .join(flex_image_versions, flex_image_versions.c.id == flex_instances.c.version_id)
        .join(flex_images, flex_images.c.id == flex_image_versions.c.image_id)
        .join(
            eff,
            eff.c.id == func.coalesce(flex_instances.c.policy_id, flex_entitlements.c.policy_id),
        )
    )
    if where is not None:
        q = q.where(where)
    q = q.order_by(flex_instances.c.created, flex_instances.c.id).offset(offset).limit(limit)
    return list(c.execute(q))


def _instance_public(r: FlexInstanceView) -> FlexInstancePublic:
    return from_row(
        FlexInstancePublic, r, policy_override=r.policy_id is not None, device=r.device_id
    )


def list_instances(
    engine: Engine, actor: Principal, limit: int | None = None, offset: int = 0
) -> list[FlexInstancePublic]:
    """Every instance, oldest first; ``limit``/``offset``: one page of them (the console's)."""
    actor.require("read")
    with read_tx(engine) as c:
        return [_instance_public(r) for r in instance_rows(c, None, limit, offset)]


def _find_instance(c: Connection, ref: str) -> FlexInstanceView:
    rows = instance_rows(c, flex_instances.c.id == ref)
    if not rows:
        raise NotFoundError(f"no flex instance {ref!r}")
    return rows[0]


def show_instance(engine: Engine, actor: Principal, ref: str) -> FlexInstancePublic:
    actor.require("read")
    with read_tx(engine) as c:
        return _instance_public(_find_instance(c, ref))


def set_state(
    engine: Engine, actor: Principal, ref: str, state: str, message: str = ""
) -> FlexInstancePublic:
    """Lock, unlock (``active``) or revoke an instance; the laptop learns it at check-in.
    A revoked instance stays revoked, and so does its managed guest's device; a lock
    revokes the enrollment token of a guest not enrolled yet (an unlock's next lease
    carries a new one)."""
    actor.require("flex.operate")
    with write_tx(engine) as c:
        r = _find_instance(c, ref)
        if r.state == REVOKED:
            raise ConflictError(f"flex instance {r.id} is revoked: it cannot change state")
        if state == REVOKED:
            flex_manage.end_instance(c, actor.name, r.id, message, "revoked")
            return _instance_public(_find_instance(c, r.id))
        c.execute(
            update(flex_instances)
            .where(flex_instances.c.id == r.id)
            .values(state=state, message=message)
        )
        action = {ACTIVE: "unlock", LOCKED: "lock"}[state]
        if state == LOCKED and r.enroll_token_id:
            flex_manage.revoke_token(c, r.enroll_token_id)
        audit(
            c,
            actor.name,
            f"flex.instance.{action}",
            r.id,
            user=r.user,
            was=r.state,
            message=message,
        )
        return _instance_public(_find_instance(c, r.id))


def set_instance_policy(
    engine: Engine, actor: Principal, ref: str, policy: str | None
) -> FlexInstancePublic:
    """Override an instance's policy (None: the entitlement's again)."""
    actor.require("flex.operate")
    with write_tx(engine) as c:
        r = _find_instance(c, ref)
        pid = find_policy(c, policy).id if policy else None
        c.execute(update(flex_instances).where(flex_instances.c.id == r.id).values(policy_id=pid))
        audit(c, actor.name, "flex.instance.set_policy", r.id, user=r.user, policy=policy)
        return _instance_public(_find_instance(c, r.id))
