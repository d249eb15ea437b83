"""The laptop's view of flex (``/flex/my``): the entitlements naming the caller or a group
of theirs, their own instances, a new instance with its signed manifest and lease, the
lease's renewal at each check-in, and the image's pieces.

A policy is read at every lease, so an edit reaches every instance at its next check-in.
A user reaches only their own entitlements and instances: anything else is "not found".
An instance serves its image only while its user still holds its entitlement and its
policy has not expired: the laptop's own checks are not the only ones (its owner is
root on it). A check-in of an instance whose entitlement was withdrawn ends it
(``flex_manage.end_instance``), and its lease says so.
"""

from __future__ import annotations

import datetime as dt

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine, func, insert, select, update

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import (
    flex_entitlements,
    flex_image_versions,
    flex_images,
    flex_instances,
    flex_policies,
)
from lamina.errors import ForbiddenError, NotFoundError
from lamina.protocol.flex import (
    FlexEntitlementMine,
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
from lamina.server.services import fleet, flex_manage
from lamina.server.services import flex_images as images
from lamina.server.services.common import audit, aware, from_row, new_id, now
from lamina.server.services.flex_admin import ACTIVE, REVOKED, instance_rows
from lamina.server.services.flex_manage import revoke_token
from lamina.server.services.flex_policies import policy_doc
from lamina.server.services.rows import FlexEntitlement, FlexInstance
from lamina.store.repository import Store


def _require_user(actor: Principal) -> None:
    if actor.kind != "user":
        raise ForbiddenError(f"{actor.name} is not a user")
    actor.require("flex.use")


def _my_entitlements(c: Connection, actor: Principal) -> list[FlexEntitlement]:
    # ids first: DISTINCT over the rows themselves would compare JSON (PostgreSQL cannot)
    ids = flex_manage.entitlement_ids(actor.id)
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


def _my_entitlement(c: Connection, actor: Principal, ref: str) -> FlexEntitlement:
    for e in _my_entitlements(c, actor):
        if ref in (e.id, e.name):
            return e
    raise NotFoundError(f"no entitlement {ref!r} for {actor.name}")


def _my_instance(c: Connection, actor: Principal, ref: str) -> FlexInstance:
    r = c.execute(
        select(flex_instances).where(
            flex_instances.c.id == ref, flex_instances.c.user_id == actor.id
        )
    ).first()
    if r is None:
        raise NotFoundError(f"no flex instance {ref!r} of {actor.name}")
    return r


def _serving(c: Connection, inst: FlexInstance) -> None:
    """Refuse (403) to serve an instance's image unless it may (``flex_manage.refusal``:
    active, its user enabled and still entitled, its policy not expired)."""
    why = flex_manage.refusal(c, inst.id)
    if why is not None:
        raise ForbiddenError(why)


def _lease(c: Connection, inst: FlexInstance, actor_name: str, server_url: str | None) -> Lease:
    """The lease of ``inst`` now; for a managed guest not enrolled yet, a fresh one-use
    enrollment token (the previous one is revoked, the new one recorded on the instance)."""
    e = c.execute(
        select(flex_entitlements).where(flex_entitlements.c.id == inst.entitlement_id)
    ).one()
    p = flex_manage.policy_of(c, inst.policy_id, e.policy_id)
    v = c.execute(
        select(flex_image_versions).where(flex_image_versions.c.id == inst.version_id)
    ).one()
    doc = policy_doc(p, aware(inst.created))
    issued = now()
    until = lease_until(issued, doc.lease_seconds, doc.expires_at)
    manage = None
    if (
        e.manage
        and inst.device_id is None
        and server_url
        and flex_manage.refusal(c, inst.id) is None  # (no token for what may not serve)
    ):
        if inst.enroll_token_id:
            revoke_token(c, inst.enroll_token_id)
        token_id, token = fleet.issue_enroll_token(
            c,
            f"flex instance {inst.id}",
            e.cvd_policy_id,
            max(until, issued + dt.timedelta(hours=1)),
        )
        c.execute(
            update(flex_instances)
            .where(flex_instances.c.id == inst.id)
            .values(enroll_token_id=token_id)
        )
        manage = ManageInfo(server_url=server_url, token=token, expires_at=until)
    return Lease(
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
        why = flex_manage.expired(flex_manage.policy_of(c, None, e.policy_id), None)
        if why is not None:
            raise ForbiddenError(why)
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
        lease = _lease(c, inst, actor.name, server_url)
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
        if inst.state != REVOKED and not flex_manage.entitled(c, actor.id, inst.entitlement_id):
            flex_manage.end_instance(
                c, actor.name, inst.id, flex_manage.WITHDRAWN, "entitlement withdrawn"
            )
            inst = _my_instance(c, actor, ref)
        c.execute(
            update(flex_instances).where(flex_instances.c.id == inst.id).values(last_checkin=now())
        )
        lease = _lease(c, inst, actor.name, server_url)
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
        _serving(c, inst)
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
        _serving(c, inst)
        v = c.execute(
            select(flex_image_versions).where(flex_image_versions.c.id == inst.version_id)
        ).one()
    return images.piece_bytes(store, v, n)


def my_instances(engine: Engine, actor: Principal) -> list[FlexInstanceMine]:
    _require_user(actor)
    with read_tx(engine) as c:
        mine = instance_rows(c, flex_instances.c.user_id == actor.id)
        return [from_row(FlexInstanceMine, r) for r in mine]
