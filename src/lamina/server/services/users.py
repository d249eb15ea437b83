"""Users, logins (throttled per user and client), sessions and tokens, and who a bearer token
belongs to."""

from __future__ import annotations

import datetime as dt
import functools
import secrets
from typing import Any

from sqlalchemy import Connection, Engine, Row, Select, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from lamina.db.engine import read_once, read_tx, write_tx
from lamina.db.models import api_tokens, audit_log, devices, enroll_tokens, login_throttle, users
from lamina.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    RateLimitedError,
    UsageError,
)
from lamina.protocol.schemas import (
    ApiTokenCreate,
    AuditPublic,
    LoginResponse,
    MePublic,
    PasswordChange,
    TokenInfo,
    UserCreate,
    UserPublic,
)
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
from lamina.server.services import flex_manage, journal
from lamina.server.services.common import TableRow, audit, aware, from_row, new_id, now
from lamina.server.services.credentials import DeviceCredentials, Presented
from lamina.server.services.rows import User

SESSION_LIFETIME = dt.timedelta(days=30)
#: Kinds of user token: from a login, or made for a script.
SESSION, API = "session", "api"


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


def _public(r: User) -> UserPublic:
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


#: A failed-login key is forgotten this long after its last failure (if not locked).
THROTTLE_MEMORY = dt.timedelta(days=1)
#: The longest lock-out one (user name, client) key can earn.
MAX_LOCKOUT = dt.timedelta(days=1)


@functools.cache
def dummy_hash() -> str:
    """A hash verified for unknown user names, so they cost the same Argon2 time as known ones."""
    return hash_password(secrets.token_urlsafe(18))


def lockout(failures: int, attempts: int, window: int) -> dt.timedelta | None:
    """How long a key with ``failures`` failures in a row may not try: exponential from ``window``."""
    if failures < attempts:
        return None
    pause = dt.timedelta(seconds=window * 2 ** min(failures - attempts, 20))
    return min(pause, MAX_LOCKOUT)


def _reserve_attempt(
    c: Connection, name: str, client: str, attempts: int, window: int
) -> tuple[int, dt.datetime | None]:
    """Count this attempt as a failure before checking the password (it is reset on success).

    One atomic upsert per attempt: parallel guesses from one key cannot all pass a
    count taken before any of them is recorded (PostgreSQL at READ COMMITTED too).
    Returns the failures in a row including this one, and the lock it sets, if any.
    """
    t = now()
    dialect = postgresql if c.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(login_throttle).values(
        name=name, client=client, failures=1, locked_until=None, last_failure=t
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[login_throttle.c.name, login_throttle.c.client],
        set_={"failures": login_throttle.c.failures + 1, "last_failure": t},
        where=or_(login_throttle.c.locked_until.is_(None), login_throttle.c.locked_until <= t),
    ).returning(login_throttle.c.failures)
    failures = c.execute(stmt).scalar()
    if failures is None:  # the key is locked: the row was left as it was
        until = c.execute(
            select(login_throttle.c.locked_until).where(
                login_throttle.c.name == name, login_throttle.c.client == client
            )
        ).scalar_one()
        wait = max(1, int((aware(until) - t).total_seconds()))
        raise RateLimitedError(
            f"too many failed logins for {name!r} from {client}; try again in {_human(wait)}"
        )
    pause = lockout(failures, attempts, window)
    until = t + pause if pause else None
    if until is not None:
        c.execute(
            update(login_throttle)
            .where(login_throttle.c.name == name, login_throttle.c.client == client)
            .values(locked_until=until)
        )
    return failures, until


def _human(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} seconds"
    if seconds < 7200:
        return f"{seconds // 60} minutes"
    return f"{seconds // 3600} hours"


def login(
    engine: Engine, name: str, password: str, client: str, attempts: int, window: int
) -> LoginResponse:
    """Check a password, throttled per (user name, client address).

    ``attempts`` failures in a row from one client lock that (name, client) key for
    ``window`` seconds, doubling with each further failure: nobody locks a user out
    from another address. Unknown names go through the same steps, a dummy hash
    included, so neither the time nor the answer tells whether a name exists. Argon2
    runs between two short transactions, never inside one.
    """
    with write_tx(engine) as c:
        c.execute(
            delete(login_throttle).where(
                login_throttle.c.last_failure < now() - THROTTLE_MEMORY,
                or_(login_throttle.c.locked_until.is_(None), login_throttle.c.locked_until < now()),
            )
        )
    with write_tx(engine) as c:
        failures, locked = _reserve_attempt(c, name, client, attempts, window)
        row = c.execute(select(users).where(users.c.name == name)).first()
    good = verify_password(row.password_hash if row is not None else dummy_hash(), password)
    with write_tx(engine) as c:
        if row is None or row.disabled or not good:
            # Bounded: one row for the first failure of a run and one per lock-out, and
            # none for names that are no account (anyone can send those).
            if row is not None and (failures == 1 or locked is not None):
                audit(
                    c,
                    name,
                    "auth.login_failed",
                    name,
                    client=client,
                    failures=failures,
                    locked_until=locked.isoformat() if locked else None,
                )
            failed = True
        else:
            failed = False
            c.execute(
                delete(login_throttle).where(
                    login_throttle.c.name == name, login_throttle.c.client == client
                )
            )
            token = new_token(USER_TOKEN)
            expires = now() + SESSION_LIFETIME
            c.execute(
                insert(api_tokens).values(
                    id=new_id(),
                    user_id=row.id,
                    token_hash=token_hash(token),
                    name=f"login from {client}",
                    kind=SESSION,
                    created=now(),
                    expires=expires,
                )
            )
            audit(c, name, "auth.login", name, client=client)
    if failed or row is None:
        raise AuthError("wrong user name or password")
    return LoginResponse(token=token, user=row.name, role=row.role, expires=expires)


def create_api_token(engine: Engine, actor: Principal, req: ApiTokenCreate) -> LoginResponse:
    """A named token for scripts, acting as the calling user; listed and revoked like a session."""
    if actor.kind != "user":
        raise ForbiddenError(f"{actor.name} may not make API tokens")
    token = new_token(USER_TOKEN)
    tid = new_id()
    expires = now() + dt.timedelta(seconds=req.expires_in)
    with write_tx(engine) as c:
        c.execute(
            insert(api_tokens).values(
                id=tid,
                user_id=actor.id,
                token_hash=token_hash(token),
                name=req.name,
                kind=API,
                created=now(),
                expires=expires,
            )
        )
        audit(c, actor.name, "token.create", tid, kind=API, name=req.name)
    return LoginResponse(token=token, user=actor.name, role=actor.role, expires=expires)


def logout(engine: Engine, actor: Principal) -> None:
    """Revoke the session (or API token) this call was made with."""
    if actor.kind != "user" or not actor.token_id:
        raise ForbiddenError(f"{actor.name} has no session to log out of")
    with write_tx(engine) as c:
        c.execute(delete(api_tokens).where(api_tokens.c.id == actor.token_id))
        audit(c, actor.name, "auth.logout", actor.token_id)


def me(actor: Principal) -> MePublic:
    """Who the bearer token belongs to, and what it may do."""
    return from_row(MePublic, actor, permissions=sorted(actor.permissions))


#: A token's last use is written at most this often (a write per call otherwise).
LAST_USED_EVERY = dt.timedelta(seconds=60)


def authenticate(engine: Engine, token: str, known: DeviceCredentials | None = None) -> Principal:
    """The principal a bearer token belongs to, or AuthError. A device's, once read, is
    kept in ``known`` (``DeviceCredentials``: the caller asks it first)."""
    h = token_hash(token)
    if token.startswith(USER_TOKEN):
        with read_tx(engine) as c:
            r = c.execute(
                select(
                    users,
                    api_tokens.c.id.label("token_id"),
                    api_tokens.c.expires,
                    api_tokens.c.last_used,
                )
                .join(api_tokens, api_tokens.c.user_id == users.c.id)
                .where(api_tokens.c.token_hash == h)
            ).first()
        if r is None:
            raise AuthError("invalid or revoked token: log in again")
        if r.disabled:
            raise AuthError(f"user {r.name} is disabled")
        exp = aware(r.expires)
        if exp is not None and exp < now():
            raise AuthError("the session has expired: log in again")
        t = now()
        last = aware(r.last_used)
        if last is None or last < t - LAST_USED_EVERY:  # a write a minute, not one a call
            with write_tx(engine) as c:
                c.execute(
                    update(api_tokens).where(api_tokens.c.id == r.token_id).values(last_used=t)
                )
        return Principal(
            "user", r.id, r.name, r.role, ROLES.get(r.role, frozenset()), token_id=r.token_id
        )
    if token.startswith(DEVICE_TOKEN):
        return verify_device(engine, Presented(h, known))
    raise AuthError("missing or malformed bearer token")


def verify_device(engine: Engine, who: Principal | Presented) -> Principal:
    """The device a credential ``Presented`` belongs to, or AuthError; a ``Principal``
    (verified already by this process) as it is. Called in the worker thread that serves
    the request (``deps.presented_device``): one thread hop a request, not two."""
    if isinstance(who, Principal):
        return who
    generation = who.generation()
    # one statement, no transaction around it (on PostgreSQL, where every request
    # of a device reads its row: ``DeviceCredentials`` keeps them on SQLite only)
    row: Select[Any] = select(devices.c.id, devices.c.hostname, devices.c.status)
    with read_once(engine) as c:
        d = c.execute(row.where(devices.c.credential_hash == who.token_hash)).first()
    return device_principal(d, who, generation)


def device_principal(row: Row[Any] | None, who: Presented, generation: int | None) -> Principal:
    """The device whose ``devices`` row (its ``id``, ``hostname``, ``status``) the
    credential ``who`` matched (None: none did), or AuthError; kept in ``who.known`` if
    no write that may change it began since ``generation`` (``DeviceCredentials.keep``)."""
    if row is None:
        raise AuthError("unknown or revoked device credential")
    if row.status in REFUSED_DEVICE_STATES:
        raise AuthError(
            f"device {row.hostname} is {row.status}: its credential no longer works"
            " (enroll it again with a new token)"
        )
    device = Principal("device", row.id, f"device {row.hostname}", role=row.status)
    if who.known is not None:
        who.known.keep(who.token_hash, device, generation)
    return device


#: Device states whose credential is refused (fleet.REJECTED, REVOKED, ARCHIVED, migration.REPLACED).
REFUSED_DEVICE_STATES = ("rejected", "revoked", "archived", "replaced")


def audit_entries(engine: Engine, actor: Principal, limit: int = 200) -> list[AuditPublic]:
    actor.require("user.admin")
    if not 1 <= limit <= 10000:
        raise UsageError("limit must be between 1 and 10000")
    with read_tx(engine) as c:
        q = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        return [journal.entry_public(r) for r in c.execute(q)]


def _user(c: Connection, name: str) -> User:
    r = c.execute(select(users).where(users.c.name == name)).first()
    if r is None:
        raise NotFoundError(f"no user {name!r}")
    return r


def _keep_an_administrator(c: Connection, r: User, doing: str) -> None:
    """Refuse to leave the server without an enabled administrator.

    The enabled administrators' rows are locked (``FOR UPDATE``, in one order) before
    they are counted: on PostgreSQL two administrators disabling or deleting each other at
    once would otherwise each count the other still enabled, and both succeed. The second
    waits for the first, then counts again. (SQLite's writers are serialized already.)"""
    if r.role != "administrator" or r.disabled:
        return
    enabled = c.execute(
        select(users.c.id)
        .where(users.c.role == "administrator", ~users.c.disabled)
        .order_by(users.c.id)
        .with_for_update()
    ).scalars()
    others = [i for i in enabled if i != r.id]
    if not others:
        raise ConflictError(f"cannot {doing} {r.name}: it is the last enabled administrator")


def set_disabled(engine: Engine, actor: Principal, name: str, disabled: bool) -> UserPublic:
    """Disable (every session of the user stops working at once) or enable a user."""
    actor.require("user.admin")
    with write_tx(engine) as c:
        r = _user(c, name)
        if disabled:
            _keep_an_administrator(c, r, "disable")
        c.execute(update(users).where(users.c.id == r.id).values(disabled=disabled))
        audit(c, actor.name, "user.disable" if disabled else "user.enable", name)
        return _public(_user(c, name))


def disable_user(engine: Engine, actor: Principal, name: str) -> None:
    set_disabled(engine, actor, name, True)


def delete_user(engine: Engine, actor: Principal, name: str) -> None:
    """Delete a user and every token of theirs: their sessions and API tokens, the
    enrollment tokens they issued (a user made later under the same name must not bring
    them back), and their flex instances with those instances' managed guests."""
    actor.require("user.admin")
    with write_tx(engine) as c:
        r = _user(c, name)
        _keep_an_administrator(c, r, "delete")
        flex_manage.end_users_instances(c, actor.name, r.id, f"user {name} was deleted")
        c.execute(
            update(enroll_tokens)
            .where(enroll_tokens.c.created_by == name, enroll_tokens.c.revoked.is_(None))
            .values(revoked=now())
        )
        n = c.execute(delete(api_tokens).where(api_tokens.c.user_id == r.id)).rowcount
        c.execute(delete(users).where(users.c.id == r.id))
        audit(c, actor.name, "user.delete", name, role=r.role, tokens_revoked=n)


def set_password(engine: Engine, actor: Principal, name: str, req: PasswordChange) -> None:
    """Change a password: one's own (giving the current one, administrators too: a leaked
    session or API token must not be enough to lock its user out) or, with ``user.admin``,
    another user's.

    Every other session of the user is revoked.
    """
    own = actor.kind == "user" and actor.name == name
    if not own:
        actor.require("user.admin")
    with read_tx(engine) as c:
        r = _user(c, name)
    if own and not (req.current and verify_password(r.password_hash, req.current)):
        raise AuthError("the current password is wrong")
    new_hash = hash_password(req.password)  # Argon2 outside the write transaction
    with write_tx(engine) as c:
        c.execute(update(users).where(users.c.id == r.id).values(password_hash=new_hash))
        n = c.execute(
            delete(api_tokens).where(
                api_tokens.c.user_id == r.id, api_tokens.c.id != (actor.token_id if own else "")
            )
        ).rowcount
        audit(c, actor.name, "user.passwd", name, tokens_revoked=n)


# --- every kind of token: list and revoke ------------------------------------------
def _state(expires: dt.datetime | None, revoked: bool = False, exhausted: bool = False) -> str:
    if revoked:
        return "revoked"
    if expires is not None and expires < now():
        return "expired"
    return "used up" if exhausted else "active"


def _with_owner() -> Select[tuple[object, ...]]:
    """Sessions and API tokens with their owner's name (``owner``)."""
    return select(api_tokens, users.c.name.label("owner")).join(
        users, users.c.id == api_tokens.c.user_id
    )


def _enrollment_info(e: TableRow, state: str) -> TokenInfo:
    """An enrollment token as the token list shows it."""
    return from_row(
        TokenInfo,
        e,
        kind="enrollment",
        owner=e.created_by,
        name="enrollment",
        last_used=None,
        state=state,
    )


def list_tokens(engine: Engine, actor: Principal) -> list[TokenInfo]:
    """Sessions, API tokens and enrollment tokens the caller may see.

    ``user.admin`` sees every token; ``device.write`` sees enrollment tokens; every
    user sees their own sessions.
    """
    if actor.kind != "user":
        raise ForbiddenError(f"{actor.name} may not list tokens")
    out: list[TokenInfo] = []
    q = _with_owner()
    if "user.admin" not in actor.permissions:
        q = q.where(api_tokens.c.user_id == actor.id)
    with read_tx(engine) as c:
        for r in c.execute(q.order_by(api_tokens.c.created)):
            state = _state(aware(r.expires))
            out.append(from_row(TokenInfo, r, state=state, current=r.id == actor.token_id))
        if actor.permissions & {"user.admin", "device.write"}:
            for e in c.execute(select(enroll_tokens).order_by(enroll_tokens.c.created)):
                state = _state(aware(e.expires), e.revoked is not None, e.uses >= e.max_uses)
                out.append(_enrollment_info(e, state))
    return out


def revoke_token(engine: Engine, actor: Principal, token_id: str) -> TokenInfo:
    """Revoke a session, an API token (its owner, or ``user.admin``) or an enrollment token
    (``device.write``). It stops working at once."""
    if actor.kind != "user":
        raise ForbiddenError(f"{actor.name} may not revoke tokens")
    with write_tx(engine) as c:
        r = c.execute(_with_owner().where(api_tokens.c.id == token_id)).first()
        if r is not None:
            if r.user_id != actor.id:
                actor.require("user.admin")
            c.execute(delete(api_tokens).where(api_tokens.c.id == r.id))
            audit(c, actor.name, "token.revoke", r.id, kind=r.kind, owner=r.owner)
            return from_row(TokenInfo, r, state="revoked")
        e = c.execute(select(enroll_tokens).where(enroll_tokens.c.id == token_id)).first()
        if e is None:
            raise NotFoundError(f"no token {token_id!r}")
        actor.require("device.write")
        if e.revoked is None:
            c.execute(update(enroll_tokens).where(enroll_tokens.c.id == e.id).values(revoked=now()))
        audit(c, actor.name, "token.revoke", e.id, kind="enrollment", uses=e.uses)
        return _enrollment_info(e, "revoked")
