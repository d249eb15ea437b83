"""The flex services straight, on SQLite and on a real PostgreSQL: the queries behind the
routes (entitlements through groups, instance lists, leases) on both databases."""

from __future__ import annotations

import datetime as dt
import random
import shutil
from pathlib import Path

import pytest

from lamina.config import ServerSettings
from lamina.errors import NotFoundError
from lamina.protocol.flex import (
    FlexEntitle,
    FlexPolicyCreate,
    FlexPolicyUpdate,
    GroupCreate,
    Lease,
    verify,
)
from lamina.protocol.schemas import UserCreate
from lamina.server.app import open_context
from lamina.server.security import ROLES, Principal
from lamina.server.services import flex, flex_images, flex_keys, flex_policies, groups, users


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")
@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def test_flex_services(db: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue("pg_db_url") if db == "postgresql" else None
    ctx, _ = open_context(
        ServerSettings(data=tmp_path / "data", db=url, admin_password="admin-password-1")
    )
    admin = Principal("user", "admin-id", "admin", "administrator", ROLES["administrator"])
    for name in ("bob", "eve"):
        users.create_user(
            ctx.engine, admin, UserCreate(name=name, password="password-123", role="flex-user")
        )
    with ctx.engine.connect() as c:
        ids = groups.user_ids(c, ["bob", "eve"])
    bob = Principal("user", ids["bob"], "bob", "flex-user", ROLES["flex-user"])
    eve = Principal("user", ids["eve"], "eve", "flex-user", ROLES["flex-user"])
    raw = tmp_path / "d.raw"
    raw.write_bytes(random.Random(2).randbytes(200_000))
    work = flex_images.tmp_dir(ctx.settings.data)
    flex_images.register(ctx.engine, ctx.store, admin, "img", raw, work, 256, 2, "uefi")
    flex_policies.create_policy(ctx.engine, admin, FlexPolicyCreate(name="p", valid_for=86400))
    groups.create_group(ctx.engine, admin, GroupCreate(name="g", members=["bob"]))
    flex.entitle(ctx.engine, admin, FlexEntitle(name="e", image="img:1", policy="p", groups=["g"]))
    assert [e.name for e in flex.my_entitlements(ctx.engine, bob)] == ["e"]
    assert flex.my_entitlements(ctx.engine, eve) == []
    key = flex_keys.signing_key(ctx.settings.data)
    made = flex.create_instance(ctx.engine, key, bob, "e", "laptop", None)
    with pytest.raises(NotFoundError):
        flex.create_instance(ctx.engine, key, eve, "e", "laptop", None)
    flex_policies.update_policy(
        ctx.engine, admin, "p", FlexPolicyUpdate(restrictions={"clipboard": True})
    )
    signed = flex.checkin(ctx.engine, key, bob, made.instance, dt.datetime.now(dt.UTC), None)
    lease = verify(signed, key.public_key(), Lease)
    assert lease.policy.restrictions.clipboard and lease.expires_at is not None
    [row] = flex.list_instances(ctx.engine, admin)
    assert (row.user, row.image, row.policy, row.state) == ("bob", "img", "p", "active")
    flex.set_state(ctx.engine, admin, made.instance, flex.LOCKED, "stop")
    assert [i.state for i in flex.my_instances(ctx.engine, bob)] == ["locked"]
    assert flex.list_entitlements(ctx.engine, admin)[0].groups == ["g"]
    ctx.engine.dispose()
