"""Flex: images run on users' laptops under a policy, by entitlement.

One module per job (the routes, the console and the other services call them
through this one):

- ``flex_images``: images and their versions (checked, converted, stored);
- ``flex_policies``: restriction policies;
- ``flex_admin``: entitlements, and the instances as an administrator steers them;
- ``flex_laptop``: the laptop's view (``/flex/my``): instances, leases, pieces;
- ``flex_manage`` and this module: managed guests (a flex instance that is also a device).
"""

from __future__ import annotations

from sqlalchemy import Engine, select

from lamina.db.engine import read_tx, write_tx
from lamina.db.models import cvd_layers, cvds, flex_entitlements, flex_instances
from lamina.errors import LaminaError
from lamina.protocol.schemas import PlanPublic
from lamina.server.security import Principal
from lamina.server.services import layers as layer_service
from lamina.server.services.common import audit
from lamina.server.services.flex_admin import ACTIVE as ACTIVE
from lamina.server.services.flex_admin import LOCKED as LOCKED
from lamina.server.services.flex_admin import REVOKED as REVOKED
from lamina.server.services.flex_admin import delete_entitlement as delete_entitlement
from lamina.server.services.flex_admin import entitle as entitle
from lamina.server.services.flex_admin import list_entitlements as list_entitlements
from lamina.server.services.flex_admin import list_instances as list_instances
from lamina.server.services.flex_admin import set_instance_policy as set_instance_policy
from lamina.server.services.flex_admin import set_state as set_state
from lamina.server.services.flex_admin import show_entitlement as show_entitlement
from lamina.server.services.flex_admin import show_instance as show_instance
from lamina.server.services.flex_admin import update_entitlement as update_entitlement
from lamina.server.services.flex_laptop import checkin as checkin
from lamina.server.services.flex_laptop import create_instance as create_instance
from lamina.server.services.flex_laptop import my_entitlements as my_entitlements
from lamina.server.services.flex_laptop import my_instances as my_instances
from lamina.server.services.flex_laptop import my_manifest as my_manifest
from lamina.server.services.flex_laptop import my_piece as my_piece
from lamina.store.repository import Store


def assign_guest_layers(engine: Engine, store: Store, cvd_id: str) -> PlanPublic | None:
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
