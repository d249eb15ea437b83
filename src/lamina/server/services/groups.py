"""Groups of users: named sets that flex entitlements name instead of each user."""

from __future__ import annotations

from sqlalchemy import Connection, Engine, delete, insert, select

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import flex_entitlement_subjects, user_group_members, user_groups, users
from lamina.errors import ConflictError, NotFoundError
from lamina.protocol.flex import GroupCreate, GroupPublic
from lamina.server.security import Principal
from lamina.server.services import flex_manage
from lamina.server.services.common import audit, aware, new_id, now
from lamina.server.services.rows import Group


def find_group(c: Connection, name: str) -> Group:
    r = c.execute(
        select(user_groups).where((user_groups.c.name == name) | (user_groups.c.id == name))
    ).first()
    if r is None:
        raise NotFoundError(f"no group {name!r}")
    return r


def user_ids(c: Connection, names: list[str]) -> dict[str, str]:
    """``{name: id}`` of the named users; NotFoundError naming the first unknown one."""
    found = {
        r.name: r.id
        for r in c.execute(select(users.c.id, users.c.name).where(users.c.name.in_(names)))
    }
    for n in names:
        if n not in found:
            raise NotFoundError(f"no user {n!r}")
    return found


def _public(c: Connection, g: Group) -> GroupPublic:
    members = [
        r.name
        for r in c.execute(
            select(users.c.name)
            .join(user_group_members, user_group_members.c.user_id == users.c.id)
            .where(user_group_members.c.group_id == g.id)
            .order_by(users.c.name)
        )
    ]
    return _group(g, members)


def _group(g: Group, members: list[str]) -> GroupPublic:
    return GroupPublic(id=g.id, name=g.name, members=members, created=aware(g.created))


def create_group(engine: Engine, actor: Principal, req: GroupCreate) -> GroupPublic:
    actor.require("user.admin")
    with write_tx(engine) as c:
        if c.execute(select(user_groups.c.id).where(user_groups.c.name == req.name)).first():
            raise ConflictError(f"group {req.name!r} exists already")
        ids = user_ids(c, req.members)
        gid = new_id()
        c.execute(insert(user_groups).values(id=gid, name=req.name, created=now()))
        for uid in set(ids.values()):
            c.execute(insert(user_group_members).values(group_id=gid, user_id=uid))
        audit(c, actor.name, "group.create", gid, name=req.name, members=sorted(ids))
        return _public(c, find_group(c, gid))


def list_groups(engine: Engine, actor: Principal) -> list[GroupPublic]:
    actor.require("read")
    with read_tx(engine) as c:
        groups = list(c.execute(select(user_groups).order_by(user_groups.c.name)))
        by: dict[str, list[str]] = {g.id: [] for g in groups}
        for r in c.execute(
            select(user_group_members.c.group_id, users.c.name)
            .join(users, users.c.id == user_group_members.c.user_id)
            .order_by(users.c.name)
        ):
            by.setdefault(r.group_id, []).append(r.name)
        return [_group(g, by[g.id]) for g in groups]


def show_group(engine: Engine, actor: Principal, name: str) -> GroupPublic:
    actor.require("read")
    with read_tx(engine) as c:
        return _public(c, find_group(c, name))


def add_members(engine: Engine, actor: Principal, name: str, members: list[str]) -> GroupPublic:
    actor.require("user.admin")
    with write_tx(engine) as c:
        g = find_group(c, name)
        have = set(
            c.execute(
                select(user_group_members.c.user_id).where(user_group_members.c.group_id == g.id)
            ).scalars()
        )
        ids = user_ids(c, members)
        for uid in set(ids.values()) - have:
            c.execute(insert(user_group_members).values(group_id=g.id, user_id=uid))
        audit(c, actor.name, "group.add", g.id, name=g.name, members=sorted(ids))
        return _public(c, g)


def remove_members(engine: Engine, actor: Principal, name: str, members: list[str]) -> GroupPublic:
    actor.require("user.admin")
    with write_tx(engine) as c:
        g = find_group(c, name)
        ids = user_ids(c, members)
        c.execute(
            delete(user_group_members).where(
                user_group_members.c.group_id == g.id,
                user_group_members.c.user_id.in_(list(ids.values())),
            )
        )
        audit(c, actor.name, "group.remove", g.id, name=g.name, members=sorted(ids))
        flex_manage.end_unentitled(c, actor.name)  # their instances of its entitlements end
        return _public(c, g)


def delete_group(engine: Engine, actor: Principal, name: str) -> None:
    """Delete a group; the entitlements naming it stop reaching its members."""
    actor.require("user.admin")
    with write_tx(engine) as c:
        g = find_group(c, name)
        c.execute(
            delete(flex_entitlement_subjects).where(
                flex_entitlement_subjects.c.kind == "group",
                flex_entitlement_subjects.c.subject_id == g.id,
            )
        )
        c.execute(delete(user_groups).where(user_groups.c.id == g.id))
        audit(c, actor.name, "group.delete", g.id, name=g.name)
        flex_manage.end_unentitled(c, actor.name)
