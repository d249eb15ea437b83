"""Managed flex guests: a device enrolling with a flex instance's token *is* that instance.

Every instance of an image starts from the same disk (same machine-id, same hostname),
so a managed guest's identity is its instance: the token is bound to it, the device row
is new for each enrollment (devices are keyed by a fresh id, never by machine-id), and its
CVD is named after the instance, so two instances never collide.
"""

from __future__ import annotations

from sqlalchemy import Connection, select, update

from lamina.db.models import flex_instances, users


def bind_device(c: Connection, token_id: str, device_id: str) -> str | None:
    """If ``token_id`` is a flex instance's enrollment token, record ``device_id`` as that
    instance's device and return the CVD name for it (``flex-<user>-<instance>``)."""
    r = c.execute(
        select(flex_instances.c.id, users.c.name)
        .join(users, users.c.id == flex_instances.c.user_id)
        .where(flex_instances.c.enroll_token_id == token_id)
    ).first()
    if r is None:
        return None
    c.execute(update(flex_instances).where(flex_instances.c.id == r.id).values(device_id=device_id))
    return f"flex-{r.name}-{r.id[:8]}"
