"""CVD policies: versioned; a change moves every CVD using the policy to the new version."""

from __future__ import annotations

from sqlalchemy import Connection, Engine, func, insert, select, update

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import cvds, policies
from lamina.errors import ConflictError
from lamina.protocol.schemas import PolicyCreate, PolicyPublic, PolicySettings, PolicyUpdate
from lamina.server.security import Principal
from lamina.server.services.common import audit, find_one, new_id, now
from lamina.server.services.rows import Policy


def _public(c: Connection, r: Policy) -> PolicyPublic:
    n = c.execute(
        select(func.count()).select_from(cvds).where(cvds.c.policy_id == r.id)
    ).scalar_one()
    return PolicyPublic(
        id=r.id, name=r.name, version=r.version, settings=PolicySettings(**r.settings), cvds=n
    )


def find(c: Connection, ref: str) -> Policy:
    return find_one(c, policies, ref, "name", "policy")


def create(engine: Engine, actor: Principal, req: PolicyCreate) -> PolicyPublic:
    actor.require("policy.write")
    with write_tx(engine) as c:
        if c.execute(select(policies.c.id).where(policies.c.name == req.name)).first():
            raise ConflictError(f"policy {req.name!r} exists already")
        pid = new_id()
        c.execute(
            insert(policies).values(
                id=pid,
                name=req.name,
                version=1,
                settings=req.settings.model_dump(),
                created=now(),
                updated=now(),
            )
        )
        audit(c, actor.name, "policy.create", req.name, settings=req.settings.model_dump())
        return _public(c, find(c, pid))


def update_policy(engine: Engine, actor: Principal, ref: str, req: PolicyUpdate) -> PolicyPublic:
    actor.require("policy.write")
    with write_tx(engine) as c:
        row = find(c, ref)
        version = row.version + 1
        c.execute(
            update(policies)
            .where(policies.c.id == row.id)
            .values(version=version, settings=req.settings.model_dump(), updated=now())
        )
        moved = c.execute(
            update(cvds).where(cvds.c.policy_id == row.id).values(policy_version=version)
        ).rowcount
        audit(
            c,
            actor.name,
            "policy.update",
            row.name,
            version=version,
            cvds=moved,
            settings=req.settings.model_dump(),
        )
        return _public(c, find(c, row.id))


def list_policies(engine: Engine, actor: Principal) -> list[PolicyPublic]:
    actor.require("read")
    with read_tx(engine) as c:
        return [_public(c, r) for r in c.execute(select(policies).order_by(policies.c.name))]


def show(engine: Engine, actor: Principal, ref: str) -> PolicyPublic:
    actor.require("read")
    with read_tx(engine) as c:
        return _public(c, find(c, ref))
