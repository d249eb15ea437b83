"""Console sessions: a session is a user token made by ``users.login``; logging out deletes it."""

from __future__ import annotations

from sqlalchemy import Engine, delete, select

from lamina.db.engine import write_tx
from lamina.db.models import api_tokens, users
from lamina.server.security import USER_TOKEN, token_hash
from lamina.server.services.common import audit


def logout(engine: Engine, token: str) -> None:
    """Revoke the session token (idempotent: an unknown token is already gone)."""
    if not token.startswith(USER_TOKEN):
        return
    with write_tx(engine) as c:
        row = c.execute(
            select(api_tokens.c.id, users.c.name)
            .join(users, users.c.id == api_tokens.c.user_id)
            .where(api_tokens.c.token_hash == token_hash(token))
        ).first()
        if row is None:
            return
        c.execute(delete(api_tokens).where(api_tokens.c.id == row.id))
        audit(c, row.name, "auth.logout", row.name)
