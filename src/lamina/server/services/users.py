"""Users, logins (rate-limited), API tokens, and who a bearer token belongs to."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import api_tokens, audit_log, devices, login_failures, users
from lamina.errors import AuthError, ConflictError, NotFoundError, RateLimitedError, UsageError
from lamina.protocol.schemas import AuditPublic, LoginResponse, UserCreate, UserPublic
from lamina.server.security import (
    DEVICE_TOKEN,
    ROLES,
    USER_TOKEN,
    Principal,
    hash_password,
    new_token,
    token_hash,
    verify_password,
)
from lamina.server.services.common import audit, aware, new_id, now

SESSION_LIFETIME = dt.timedelta(days=30)


def ensure_admin(engine: Engine, password: str | None) -> str | None:
    """Create ``admin`` on first start. Returns the generated password, if one was made."""
    with write_tx(engine) as c:
        if c.execute(select(func.count()).select_from(users)).scalar_one():
            return None
        generated = None
        if not password:
            password = generated = secrets.token_urlsafe(18)
        c.execute(
            insert(users).values(
                id=new_id(),
                name="admin",
                password_hash=hash_password(password),
                role="administrator",
                disabled=False,
                created=now(),
            )
        )
        audit(c, "system", "user.create", "admin", role="administrator")
        return generated


def _public(r: Any) -> UserPublic:
    return UserPublic(
        id=r.id, name=r.name, role=r.role, disabled=r.disabled, created=aware(r.created)
    )


def create_user(engine: Engine, actor: Principal, req: UserCreate) -> UserPublic:
    actor.require("user.admin")
    with write_tx(engine) as c:
        if c.execute(select(users.c.id).where(users.c.name == req.name)).first():
            raise ConflictError(f"user {req.name!r} exists already")
        uid = new_id()
        c.execute(
            insert(users).values(
                id=uid,
                name=req.name,
                password_hash=hash_password(req.password),
                role=req.role,
                disabled=False,
                created=now(),
            )
        )
        audit(c, actor.name, "user.create", req.name, role=req.role)
        return _public(c.execute(select(users).where(users.c.id == uid)).one())


def list_users(engine: Engine, actor: Principal) -> list[UserPublic]:
    actor.require("user.admin")
    with read_tx(engine) as c:
        return [_public(r) for r in c.execute(select(users).order_by(users.c.name))]


def login(
    engine: Engine, name: str, password: str, client: str, attempts: int, window: int
) -> LoginResponse:
    """Check a password; too many failures for one name within ``window`` seconds lock it out."""
    since = now() - dt.timedelta(seconds=window)
    with write_tx(engine) as c:
        c.execute(delete(login_failures).where(login_failures.c.time < since))
        failures = c.execute(
            select(func.count())
            .select_from(login_failures)
            .where(login_failures.c.name == name, login_failures.c.time >= since)
        ).scalar_one()
        if failures >= attempts:
            raise RateLimitedError(
                f"too many failed logins for {name!r}; try again in {window // 60} minutes"
            )
        row = c.execute(select(users).where(users.c.name == name)).first()
        if row is None or row.disabled or not verify_password(row.password_hash, password):
            c.execute(insert(login_failures).values(name=name, client=client, time=now()))
            audit(c, name, "auth.login_failed", name, client=client)
            failed = True
        else:
            failed = False
            token = new_token(USER_TOKEN)
            expires = now() + SESSION_LIFETIME
            c.execute(
                insert(api_tokens).values(
                    id=new_id(),
                    user_id=row.id,
                    token_hash=token_hash(token),
                    name=f"login from {client}",
                    created=now(),
                    expires=expires,
                )
            )
            audit(c, name, "auth.login", name, client=client)
    if failed or row is None:
        raise AuthError("wrong user name or password")
    return LoginResponse(token=token, user=row.name, role=row.role, expires=expires)


def authenticate(engine: Engine, token: str) -> Principal:
    """The principal a bearer token belongs to, or AuthError."""
    h = token_hash(token)
    with read_tx(engine) as c:
        if token.startswith(USER_TOKEN):
            r = c.execute(
                select(users, api_tokens.c.expires)
                .join(api_tokens, api_tokens.c.user_id == users.c.id)
                .where(api_tokens.c.token_hash == h)
            ).first()
            if r is None or r.disabled:
                raise AuthError("invalid or revoked token: log in again")
            exp = aware(r.expires)
            if exp is not None and exp < now():
                raise AuthError("the session has expired: log in again")
            return Principal("user", r.id, r.name, r.role, ROLES.get(r.role, frozenset()))
        if token.startswith(DEVICE_TOKEN):
            d = c.execute(select(devices).where(devices.c.credential_hash == h)).first()
            if d is None or d.status in ("rejected",):
                raise AuthError("unknown or revoked device credential")
            return Principal("device", d.id, f"device {d.hostname}")
    raise AuthError("missing or malformed bearer token")


def audit_entries(engine: Engine, actor: Principal, limit: int = 200) -> list[AuditPublic]:
    actor.require("user.admin")
    if not 1 <= limit <= 10000:
        raise UsageError("limit must be between 1 and 10000")
    with read_tx(engine) as c:
        rows = c.execute(select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)).all()
    return [
        AuditPublic(
            id=str(r.id),
            time=aware(r.time),
            actor=r.actor,
            action=r.action,
            target=r.target,
            detail=r.detail,
        )
        for r in rows
    ]


def disable_user(engine: Engine, actor: Principal, name: str) -> None:
    actor.require("user.admin")
    with write_tx(engine) as c:
        n = c.execute(update(users).where(users.c.name == name).values(disabled=True)).rowcount
        if not n:
            raise NotFoundError(f"no user {name!r}")
        audit(c, actor.name, "user.disable", name)
