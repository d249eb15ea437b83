"""Flex policies, entitlements and instances, and the laptop's view of them (``/flex/my``).

An instance's effective policy is its own override, else its entitlement's; it is read
at every lease, so a policy edit reaches every instance at its next check-in. A user
reaches only the entitlements naming them or a group of theirs, and only their own
instances: anything else is "not found".
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine, delete, func, insert, or_, select, update

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import (
    cvd_layers,
    cvds,
    enroll_tokens,
    flex_entitlement_subjects,
    flex_entitlements,
    flex_image_versions,
    flex_images,
    flex_instances,
    flex_policies,
    layers,
    policies,
    user_group_members,
    user_groups,
    users,
)
from lamina.errors import ConflictError, ForbiddenError, LaminaError, NotFoundError, UsageError
from lamina.protocol.flex import (
    FlexEntitle,
    FlexEntitlementMine,
    FlexEntitlementUpdate,
    FlexInstanceCreated,
    FlexInstanceMine,
    FlexManifest,
    Lease,
    ManageInfo,
    Signed,
    lease_until,
    sign,
)
from lamina.server.security import Principal
from lamina.server.services import fleet
from lamina.server.services import flex_images as images
from lamina.server.services import layers as layer_service
from lamina.server.services import policies as cvd_policies
from lamina.server.services.common import audit, aware, find_one, new_id, now
from lamina.server.services.flex_policies import find_policy, policy_doc
from lamina.server.services.groups import find_group, user_ids
from lamina.store.repository import Store

ACTIVE, LOCKED, REVOKED = "active", "locked", "revoked"


# --- entitlements ------------------------------------------------------------------------
def find_entitlement(c: Connection, ref: str) -> Any:
    return find_one(c, flex_entitlements, ref, "name", "entitlement")


def _image_spec(c: Connection, spec: str) -> tuple[Any, int | None]:
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


def entitle(engine: Engine, actor: Principal, req: FlexEntitle) -> dict[str, Any]:
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
) -> dict[str, Any]:
    actor.require("flex.admin")
    with write_tx(engine) as c:
        e = find_entitlement(c, ref)
        values: dict[str, Any] = {}
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
                req.users if req.users is not None else old["users"],
                req.groups if req.groups is not None else old["groups"],
            )
            if not subjects:
                raise UsageError("an entitlement needs at least one user or group")
            _set_subjects(c, e.id, subjects)
        audit(
            c,
            actor.name,
            "flex.entitlement.update",
            e.id,
            name=e.name,
            **req.model_dump(mode="json", exclude_none=True),
        )
        return _entitlements_public(c, [find_entitlement(c, e.id)])[0]


def _entitlements_public(c: Connection, rows: list[Any]) -> list[dict[str, Any]]:
    """Entitlements with names resolved: a fixed number of queries, whatever the count."""
    ids = [e.id for e in rows]
    images = {r.id: r.name for r in c.execute(select(flex_images.c.id, flex_images.c.name))}
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
        {
            "id": e.id,
            "name": e.name,
            "image": images.get(e.image_id),
            "version": e.version,
            "policy": pols.get(e.policy_id),
            "users": sorted(subs[e.id]["user"]),
            "groups": sorted(subs[e.id]["group"]),
            "manage": e.manage,
            "cvd_policy": cvd_pol.get(e.cvd_policy_id) if e.cvd_policy_id else None,
            "base": (e.layers or {}).get("base"),
            "apps": (e.layers or {}).get("apps", []),
            "created": aware(e.created),
        }
        for e in rows
    ]


def list_entitlements(engine: Engine, actor: Principal) -> list[dict[str, Any]]:
    actor.require("read")
    with read_tx(engine) as c:
        rows = list(c.execute(select(flex_entitlements).order_by(flex_entitlements.c.name)))
        return _entitlements_public(c, rows)


def show_entitlement(engine: Engine, actor: Principal, ref: str) -> dict[str, Any]:
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
def _instance_rows(
    c: Connection, where: Any = None, limit: int | None = None, offset: int = 0
) -> list[Any]:
    """Instances joined with what their public form names: one query."""
    eff = flex_policies.alias("eff")
    q = (
        select(
            flex_instances,
            users.c.name.label("user_name"),
            flex_entitlements.c.name.label("entitlement_name"),
            flex_images.c.name.label("image_name"),
            flex_image_versions.c.version.label("version"),
            eff.c.name.label("policy_name"),
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


def _instance_public(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "user": r.user_name,
        "entitlement": r.entitlement_name,
        "image": r.image_name,
        "version": r.version,
        "policy": r.policy_name,
        "policy_override": r.policy_id is not None,
        "state": r.state,
        "message": r.message,
        "last_checkin": aware(r.last_checkin),
        "client": r.client,
        "created": aware(r.created),
        "device": r.device_id,
    }


def list_instances(
    engine: Engine, actor: Principal, limit: int | None = None, offset: int = 0
) -> list[dict[str, Any]]:
    """Every instance, oldest first; ``limit``/``offset``: one page of them (the console's)."""
    actor.require("read")
    with read_tx(engine) as c:
        return [_instance_public(r) for r in _instance_rows(c, None, limit, offset)]


def _find_instance(c: Connection, ref: str) -> Any:
    rows = _instance_rows(c, flex_instances.c.id == ref)
    if not rows:
        raise NotFoundError(f"no flex instance {ref!r}")
    return rows[0]


def show_instance(engine: Engine, actor: Principal, ref: str) -> dict[str, Any]:
    actor.require("read")
    with read_tx(engine) as c:
        return _instance_public(_find_instance(c, ref))


def set_state(
    engine: Engine, actor: Principal, ref: str, state: str, message: str = ""
) -> dict[str, Any]:
    """Lock, unlock (``active``) or revoke an instance; the laptop learns it at check-in.
    A revoked instance stays revoked."""
    actor.require("flex.operate")
    with write_tx(engine) as c:
        r = _find_instance(c, ref)
        if r.state == REVOKED:
            raise ConflictError(f"flex instance {r.id} is revoked: it cannot change state")
        c.execute(
            update(flex_instances)
            .where(flex_instances.c.id == r.id)
            .values(state=state, message=message)
        )
        action = {ACTIVE: "unlock", LOCKED: "lock", REVOKED: "revoke"}[state]
        if state == REVOKED and r.enroll_token_id:
            _revoke_token(c, r.enroll_token_id)
        audit(
            c,
            actor.name,
            f"flex.instance.{action}",
            r.id,
            user=r.user_name,
            was=r.state,
            message=message,
        )
        return _instance_public(_find_instance(c, r.id))


def set_instance_policy(
    engine: Engine, actor: Principal, ref: str, policy: str | None
) -> dict[str, Any]:
    """Override an instance's policy (None: the entitlement's again)."""
    actor.require("flex.operate")
    with write_tx(engine) as c:
        r = _find_instance(c, ref)
        pid = find_policy(c, policy).id if policy else None
        c.execute(update(flex_instances).where(flex_instances.c.id == r.id).values(policy_id=pid))
        audit(c, actor.name, "flex.instance.set_policy", r.id, user=r.user_name, policy=policy)
        return _instance_public(_find_instance(c, r.id))


# --- the laptop's view -------------------------------------------------------------------------
def _require_user(actor: Principal) -> None:
    if actor.kind != "user":
        raise ForbiddenError(f"{actor.name} is not a user")
    actor.require("flex.use")


def _my_entitlements(c: Connection, actor: Principal) -> list[Any]:
    mine = select(user_group_members.c.group_id).where(user_group_members.c.user_id == actor.id)
    # ids first: DISTINCT over the rows themselves would compare JSON (PostgreSQL cannot)
    ids = select(flex_entitlement_subjects.c.entitlement_id).where(
        or_(
            (flex_entitlement_subjects.c.kind == "user")
            & (flex_entitlement_subjects.c.subject_id == actor.id),
            (flex_entitlement_subjects.c.kind == "group")
            & flex_entitlement_subjects.c.subject_id.in_(mine),
        )
    )
    q = (
        select(flex_entitlements)
        .where(flex_entitlements.c.id.in_(ids))
        .order_by(flex_entitlements.c.name)
    )
    return list(c.execute(q))


def my_entitlements(engine: Engine, actor: Principal) -> list[FlexEntitlementMine]:
    _require_user(actor)
    with read_tx(engine) as c:
        rows = _my_entitlements(c, actor)
        pols = {p.id: p for p in c.execute(select(flex_policies))}
        imgs = {i.id: i for i in c.execute(select(flex_images))}
        latest = {
            r.image_id: r.version
            for r in c.execute(
                select(
                    flex_image_versions.c.image_id,
                    func.max(flex_image_versions.c.version).label("version"),
                ).group_by(flex_image_versions.c.image_id)
            )
        }
        return [
            FlexEntitlementMine(
                id=e.id,
                name=e.name,
                image=imgs[e.image_id].name,
                version=e.version or latest[e.image_id],
                policy=policy_doc(pols[e.policy_id]),
            )
            for e in rows
            if e.version or e.image_id in latest
        ]


def _my_entitlement(c: Connection, actor: Principal, ref: str) -> Any:
    for e in _my_entitlements(c, actor):
        if ref in (e.id, e.name):
            return e
    raise NotFoundError(f"no entitlement {ref!r} for {actor.name}")


def _my_instance(c: Connection, actor: Principal, ref: str) -> Any:
    r = c.execute(
        select(flex_instances).where(
            flex_instances.c.id == ref, flex_instances.c.user_id == actor.id
        )
    ).first()
    if r is None:
        raise NotFoundError(f"no flex instance {ref!r} of {actor.name}")
    return r


def _revoke_token(c: Connection, token_id: str) -> None:
    c.execute(
        update(enroll_tokens)
        .where(enroll_tokens.c.id == token_id, enroll_tokens.c.revoked.is_(None))
        .values(revoked=now())
    )


def _lease(
    c: Connection, inst: Any, actor_name: str, server_url: str | None
) -> tuple[Lease, str | None]:
    """The lease of ``inst`` now; for a managed guest not enrolled yet, a fresh one-use
    enrollment token (the previous one is revoked). Returns the lease and the new token id."""
    e = c.execute(
        select(flex_entitlements).where(flex_entitlements.c.id == inst.entitlement_id)
    ).one()
    p = c.execute(
        select(flex_policies).where(flex_policies.c.id == (inst.policy_id or e.policy_id))
    ).one()
    v = c.execute(
        select(flex_image_versions).where(flex_image_versions.c.id == inst.version_id)
    ).one()
    doc = policy_doc(p, aware(inst.created))
    issued = now()
    until = lease_until(issued, doc.lease_seconds, doc.expires_at)
    manage = None
    token_id = None
    if e.manage and inst.state == ACTIVE and inst.device_id is None and server_url:
        if inst.enroll_token_id:
            _revoke_token(c, inst.enroll_token_id)
        token_id, token = fleet.issue_enroll_token(
            c,
            f"flex instance {inst.id}",
            e.cvd_policy_id,
            max(until, issued + dt.timedelta(hours=1)),
        )
        manage = ManageInfo(server_url=server_url, token=token, expires_at=until)
    lease = Lease(
        instance_id=inst.id,
        user=actor_name,
        entitlement_id=e.id,
        image_id=v.image_id,
        version=v.version,
        policy=doc,
        state=inst.state,
        message=inst.message,
        issued_at=issued,
        lease_until=until,
        expires_at=doc.expires_at,
        manage=manage,
    )
    return lease, token_id


def create_instance(
    engine: Engine,
    key: Ed25519PrivateKey,
    actor: Principal,
    entitlement: str,
    client: str,
    server_url: str | None,
) -> FlexInstanceCreated:
    """A new instance of an entitlement of the caller's, with its signed manifest and lease."""
    _require_user(actor)
    with write_tx(engine) as c:
        e = _my_entitlement(c, actor, entitlement)
        img = c.execute(select(flex_images).where(flex_images.c.id == e.image_id)).one()
        v = images.find_version(c, img, e.version)
        iid = new_id()
        c.execute(
            insert(flex_instances).values(
                id=iid,
                entitlement_id=e.id,
                user_id=actor.id,
                version_id=v.id,
                policy_id=None,
                state=ACTIVE,
                message="",
                client=client,
                created=now(),
                last_checkin=now(),
            )
        )
        inst = c.execute(select(flex_instances).where(flex_instances.c.id == iid)).one()
        lease, token_id = _lease(c, inst, actor.name, server_url)
        if token_id:
            c.execute(
                update(flex_instances)
                .where(flex_instances.c.id == iid)
                .values(enroll_token_id=token_id)
            )
        audit(
            c,
            actor.name,
            "flex.instance.create",
            iid,
            entitlement=e.name,
            image=img.name,
            version=v.version,
            client=client,
        )
        return FlexInstanceCreated(
            instance=iid, manifest=sign(images.manifest(img, v), key), lease=sign(lease, key)
        )


def checkin(
    engine: Engine,
    key: Ed25519PrivateKey,
    actor: Principal,
    ref: str,
    client_time: dt.datetime,
    server_url: str | None,
) -> Signed[Lease]:
    """Renew the lease of one of the caller's instances. A locked or revoked instance gets a
    lease saying so (a revoked laptop deletes its key and disk)."""
    _require_user(actor)
    with write_tx(engine) as c:
        inst = _my_instance(c, actor, ref)
        c.execute(
            update(flex_instances).where(flex_instances.c.id == inst.id).values(last_checkin=now())
        )
        lease, token_id = _lease(c, inst, actor.name, server_url)
        if token_id:
            c.execute(
                update(flex_instances)
                .where(flex_instances.c.id == inst.id)
                .values(enroll_token_id=token_id)
            )
        skew = abs((aware(client_time) or now()) - lease.issued_at).total_seconds()
        if inst.state != ACTIVE or inst.last_checkin is None or skew > 300:
            # bounded: a state the admin set, or a clock far off, not every renewal
            audit(c, actor.name, "flex.instance.checkin", inst.id, state=inst.state, skew=int(skew))
        return sign(lease, key)


def my_manifest(
    engine: Engine, key: Ed25519PrivateKey, actor: Principal, ref: str
) -> Signed[FlexManifest]:
    _require_user(actor)
    with read_tx(engine) as c:
        inst = _my_instance(c, actor, ref)
        v = c.execute(
            select(flex_image_versions).where(flex_image_versions.c.id == inst.version_id)
        ).one()
        img = c.execute(select(flex_images).where(flex_images.c.id == v.image_id)).one()
        return sign(images.manifest(img, v), key)


def my_piece(engine: Engine, store: Store, actor: Principal, ref: str, n: int) -> bytes:
    """Piece ``n`` of one of the caller's active instances."""
    _require_user(actor)
    with read_tx(engine) as c:
        inst = _my_instance(c, actor, ref)
        if inst.state != ACTIVE:
            raise ForbiddenError(
                f"flex instance {inst.id} is {inst.state}: {inst.message or 'ask your administrator'}"
            )
        v = c.execute(
            select(flex_image_versions).where(flex_image_versions.c.id == inst.version_id)
        ).one()
    return images.piece_bytes(store, v, n)


def my_instances(engine: Engine, actor: Principal) -> list[FlexInstanceMine]:
    _require_user(actor)
    with read_tx(engine) as c:
        return [
            FlexInstanceMine(
                id=r.id,
                entitlement=r.entitlement_name,
                image=r.image_name,
                version=r.version,
                state=r.state,
                client=r.client,
                created=aware(r.created),  # type: ignore[arg-type]
                last_checkin=aware(r.last_checkin),
            )
            for r in _instance_rows(c, flex_instances.c.user_id == actor.id)
        ]


# --- managed guests: their layers -----------------------------------------------------------
def assign_guest_layers(engine: Engine, store: Store, cvd_id: str) -> dict[str, Any] | None:
    """After a commit: a managed guest's CVD with no layers assigned yet gets its
    entitlement's base and apps (a plan needs the CVD's first snapshot, so this waits for
    it). A failure is audited and tried again at the next commit; the commit stands."""
    with read_tx(engine) as c:
        r = c.execute(
            select(flex_instances.c.id, flex_entitlements.c.layers)
            .join(flex_entitlements, flex_entitlements.c.id == flex_instances.c.entitlement_id)
            .join(cvds, cvds.c.device_id == flex_instances.c.device_id)
            .where(cvds.c.id == cvd_id, flex_entitlements.c.manage)
        ).first()
        if r is None:
            return None
        spec = r.layers or {}
        if not (spec.get("base") or spec.get("apps")):
            return None
        if c.execute(select(cvd_layers.c.cvd_id).where(cvd_layers.c.cvd_id == cvd_id)).first():
            return None
    system = Principal(
        "user", "flex", f"flex instance {r.id}", "system", frozenset({"layer.write"})
    )
    try:
        [result] = layer_service.assign(
            engine, store, system, [cvd_id], spec.get("base"), list(spec.get("apps") or []), False
        )
    except LaminaError as e:
        with write_tx(engine) as c:
            audit(c, system.name, "flex.instance.layers_failed", r.id, cvd=cvd_id, error=e.message)
        return None
    return result
