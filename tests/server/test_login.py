"""Logins (review finding 16), on the real service and database: SQLite, and PostgreSQL for the race.

No timing is measured: the constant-time answer is shown by the dummy hash being
verified for unknown names, and the lock-out by the keys it writes.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, select

from lamina.db.models import audit_log, login_throttle
from lamina.errors import AuthError, RateLimitedError
from lamina.protocol.schemas import UserCreate
from lamina.server import security
from lamina.server.services import users
from lamina.server.services.common import aware, now

ATTEMPTS, WINDOW = 5, 300
ADMIN = "admin-password-123"


@pytest.fixture
def engine(engine: Engine) -> Engine:
    """The shared migrated database (``tests/server/conftest.py``), with its admin."""
    users.ensure_admin(engine, ADMIN)
    return engine


@pytest.fixture
def sqlite_engine(sqlite_engine: Engine) -> Engine:
    users.ensure_admin(sqlite_engine, ADMIN)
    return sqlite_engine


class Verifier:
    """Wraps ``verify_password``: records each hash checked and whether a DB connection was held."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.hashes: list[str] = []
        self.connections_held: list[int] = []
        self.real = security.verify_password

    def __call__(self, stored: str, password: str) -> bool:
        self.hashes.append(stored)
        self.connections_held.append(self.engine.pool.checkedout())
        return self.real(stored, password)


def login(engine: Engine, name: str, password: str, client: str = "10.0.0.1") -> object:
    return users.login(engine, name, password, client, ATTEMPTS, WINDOW)


def test_unknown_name_verifies_the_dummy_hash_outside_any_transaction(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = Verifier(sqlite_engine)
    monkeypatch.setattr(users, "verify_password", v)
    with pytest.raises(AuthError) as unknown:
        login(sqlite_engine, "nobody", "guess-1")
    with pytest.raises(AuthError) as wrong:
        login(sqlite_engine, "admin", "guess-1")
    login(sqlite_engine, "admin", ADMIN)
    # An unknown name costs one Argon2 verification too, against the dummy hash...
    assert v.hashes[0] == users.dummy_hash()
    assert v.hashes[0].startswith("$argon2id$")
    assert v.hashes[1] != users.dummy_hash() and v.hashes[2] == v.hashes[1]
    # ...and gets the same answer as a wrong password.
    assert unknown.value.message == wrong.value.message
    assert type(unknown.value) is type(wrong.value) is AuthError
    # Argon2 runs with no database connection held: no write lock is kept for 100 ms.
    assert v.connections_held == [0, 0, 0]


def test_lockout_is_per_name_and_client_and_backs_off(sqlite_engine: Engine) -> None:
    e = sqlite_engine
    for i in range(ATTEMPTS):
        with pytest.raises(AuthError) as failed:
            login(e, "admin", f"wrong-{i}", client="203.0.113.9")
        assert not isinstance(failed.value, RateLimitedError)
    with pytest.raises(RateLimitedError) as locked:
        login(e, "admin", ADMIN, client="203.0.113.9")
    assert "'admin'" in locked.value.message and "203.0.113.9" in locked.value.message
    # Nobody locks the administrator out from elsewhere.
    assert login(e, "admin", ADMIN, client="10.0.0.1")
    # The same for a name that is no account: its answers do not tell it apart.
    for i in range(ATTEMPTS):
        with pytest.raises(AuthError) as failed:
            login(e, "nobody", f"wrong-{i}", client="203.0.113.9")
        assert not isinstance(failed.value, RateLimitedError)
    with pytest.raises(RateLimitedError):
        login(e, "nobody", "wrong", client="203.0.113.9")
    with e.connect() as c:
        rows = {
            (r.name, r.client): (r.failures, r.locked_until is not None)
            for r in c.execute(select(login_throttle))
        }
        audit = [
            (r.target, r.detail.get("failures"))
            for r in c.execute(select(audit_log).where(audit_log.c.action == "auth.login_failed"))
        ]
    # The successful login from 10.0.0.1 left no key; the locked keys are (name, client).
    assert rows == {
        ("admin", "203.0.113.9"): (ATTEMPTS, True),
        ("nobody", "203.0.113.9"): (ATTEMPTS, True),
    }
    # Bounded audit: the first failure of the run and the lock-out; none for a non-account.
    assert audit == [("admin", 1), ("admin", ATTEMPTS)]
    # Exponential back-off, capped.
    assert users.lockout(ATTEMPTS - 1, ATTEMPTS, WINDOW) is None
    assert [users.lockout(ATTEMPTS + k, ATTEMPTS, WINDOW).total_seconds() for k in range(4)] == [
        300,
        600,
        1200,
        2400,
    ]
    assert users.lockout(ATTEMPTS + 60, ATTEMPTS, WINDOW) == users.MAX_LOCKOUT


def test_a_success_resets_the_key(sqlite_engine: Engine) -> None:
    e = sqlite_engine
    users.create_user(
        e,
        security.Principal("user", "x", "admin", "administrator", security.ROLES["administrator"]),
        UserCreate(name="carol", password="carol-password-1", role="readonly"),
    )
    for _ in range(3):
        for i in range(ATTEMPTS - 1):
            with pytest.raises(AuthError):
                login(e, "carol", f"wrong-{i}")
        login(e, "carol", "carol-password-1")  # never locked: each success starts over
    with e.connect() as c:
        assert c.execute(select(login_throttle)).all() == []


def test_parallel_guesses_cannot_pass_the_limit(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten guesses at once from one client: only ``ATTEMPTS`` reach the password check.

    Each guess that reaches Argon2 waits there until every other guess has either
    reached it too or been refused, so a count taken before any failure is recorded
    (the original count-then-insert) would let all ten through, deterministically.
    """
    n = 10
    cond = threading.Condition()
    arrived = refused = 0
    real = security.verify_password

    def verify(stored: str, password: str) -> bool:
        nonlocal arrived
        with cond:
            arrived += 1
            cond.notify_all()
            cond.wait_for(lambda: arrived + refused == n, timeout=60)
        return real(stored, password)

    monkeypatch.setattr(users, "verify_password", verify)
    outcomes: list[str] = []

    def guess(i: int) -> None:
        nonlocal refused
        try:
            login(engine, "admin", f"guess-{i}", client="198.51.100.7")
            outcomes.append("in")
        except RateLimitedError:
            with cond:
                refused += 1
                cond.notify_all()
            outcomes.append("429")
        except AuthError:
            outcomes.append("401")

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(outcomes) == ["401"] * ATTEMPTS + ["429"] * (n - ATTEMPTS)
    with engine.connect() as c:
        r = c.execute(select(login_throttle)).one()
    assert (r.name, r.client, r.failures) == ("admin", "198.51.100.7", ATTEMPTS)
    assert r.locked_until is not None and aware(r.locked_until) > now()
