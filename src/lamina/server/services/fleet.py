"""Enrollment tokens, devices and CVDs: enroll → pending → centralize → active → archived."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Select,
    String,
    and_,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)

from lamina.db.catalog import EPOCH_VALUE
from lamina.db.engine import read_once, read_tx, write_tx
from lamina.db.models import cvds, devices, enroll_tokens, flex_instances, policies, snapshots
from lamina.db.models import users as users_table
from lamina.errors import AuthError, ConflictError, ForbiddenError, NotFoundError
from lamina.protocol import PROTOCOL_VERSION
from lamina.protocol.schemas import (
    AgentConfig,
    CentralizeRequest,
    ChunkingPublic,
    CvdPublic,
    DevicePublic,
    EnrollRequest,
    EnrollResponse,
    HardwareFacts,
    PolicySettings,
    TokenCreate,
    TokenPublic,
)
from lamina.server.security import (
    DEVICE_TOKEN,
    ENROLL_TOKEN,
    ROLES,
    Principal,
    new_token,
    token_hash,
)
from lamina.server.services import agent_events, drivers_index, flex_manage, users
from lamina.server.services import policies as policy_service
from lamina.server.services.common import audit, aware, find_one, from_row, new_id, now
from lamina.server.services.credentials import Presented
from lamina.server.services.progress import ProgressReports
from lamina.server.services.rows import Cvd, Device, JsonObject
from lamina.store.keys import ChunkingSecret

PENDING, ACTIVE, REJECTED, ARCHIVED = "pending", "active", "rejected", "archived"
#: A device whose credential an admin revoked (its CVD, if any, stays as it is).
REVOKED = "revoked"
#: A device's active CVD, as a join's condition (``active_cvd`` reads it alone).
_ACTIVE_CVD = and_(cvds.c.device_id == devices.c.id, cvds.c.state == ACTIVE)


def cvd_source(cvd_id: str) -> str:
    """The snapshot source name of a CVD's snapshots."""
    return f"cvd:{cvd_id}"


# --- tokens ---------------------------------------------------------------------
def create_token(engine: Engine, actor: Principal, req: TokenCreate) -> TokenPublic:
    actor.require("device.write")
    with write_tx(engine) as c:
        policy_id = policy_service.find(c, req.policy).id if req.policy else None
        expires = now() + dt.timedelta(seconds=req.expires_in)
        tid, token = issue_enroll_token(
            c, actor.name, policy_id, expires, uses=req.uses, reference=req.reference
        )
        audit(
            c,
            actor.name,
            "token.create",
            tid,
            policy=req.policy,
            reference=req.reference,
            expires=expires.isoformat(),
            uses=req.uses,
        )
    return TokenPublic(id=tid, token=token, expires=expires, uses=req.uses)


def issue_enroll_token(
    c: Connection,
    created_by: str,
    policy_id: str | None,
    expires: dt.datetime,
    uses: int = 1,
    reference: bool = False,
) -> tuple[str, str]:
    """Insert an enrollment token; returns its id and the token (shown once)."""
    token = new_token(ENROLL_TOKEN)
    tid = new_id()
    c.execute(
        insert(enroll_tokens).values(
            id=tid,
            token_hash=token_hash(token),
            created_by=created_by,
            created=now(),
            expires=expires,
            policy_id=policy_id,
            reference=reference,
            uses=0,
            max_uses=uses,
        )
    )
    return tid, token


# --- devices --------------------------------------------------------------------
def active_cvd(c: Connection, device_id: str) -> Cvd | None:
    """The device's active CVD row, if it has one."""
    return c.execute(
        select(cvds).where(cvds.c.device_id == device_id, cvds.c.state == ACTIVE)
    ).first()


def _device_page(c: Connection, *where: ColumnElement[bool]) -> list[DevicePublic]:
    """Devices with the id of their active CVD, in one query (a page costs one, not one per row)."""
    active = (
        select(cvds.c.id, cvds.c.device_id).where(cvds.c.state == ACTIVE).subquery("active_cvd")
    )
    q = (
        select(devices, active.c.id.label("cvd_id"))
        .select_from(devices.outerjoin(active, active.c.device_id == devices.c.id))
        .where(*where)
        .order_by(devices.c.enrolled)
    )
    return [from_row(DevicePublic, r, agent=r.agent_state) for r in c.execute(q)]


def _device_public(c: Connection, r: Device) -> DevicePublic:
    return _device_page(c, devices.c.id == r.id)[0]


def enroll(engine: Engine, req: EnrollRequest, chunking: ChunkingSecret) -> EnrollResponse:
    """Register a device with an enrollment token; a token naming a policy centralizes it at once."""
    with write_tx(engine) as c:
        t = c.execute(
            select(enroll_tokens).where(enroll_tokens.c.token_hash == token_hash(req.token))
        ).first()
        if t is None:
            raise AuthError("unknown enrollment token")
        if t.revoked is not None:
            raise AuthError("the enrollment token has been revoked")
        if aware(t.expires) < now():
            raise AuthError("the enrollment token has expired")
        _refuse_orphaned(c, t.id, t.created_by)
        # One atomic step: concurrent enrollments cannot pass the count together.
        took = c.execute(
            update(enroll_tokens)
            .where(enroll_tokens.c.id == t.id, enroll_tokens.c.uses < enroll_tokens.c.max_uses)
            .values(uses=enroll_tokens.c.uses + 1)
        ).rowcount
        if not took:
            raise AuthError(
                f"the enrollment token is used up ({t.max_uses} of {t.max_uses} enrollments):"
                " ask for a new one"
            )
        credential = new_token(DEVICE_TOKEN)
        did = new_id()
        c.execute(
            insert(devices).values(
                id=did,
                hostname=req.facts.hostname,
                status=PENDING,
                facts=req.facts.model_dump(),
                credential_hash=token_hash(credential),
                enrolled=now(),
                last_seen=now(),
                agent_state={},
            )
        )
        drivers_index.store(c, did, req.facts.model_dump())
        audit(
            c,
            f"device {req.facts.hostname}",
            "device.enroll",
            did,
            token=t.id,
            facts=req.facts.model_dump(),
        )
        status = PENDING
        if t.policy_id:
            # A flex instance's token: the device is that instance, named after it.
            name = flex_manage.bind_device(c, t.id, did)
            _centralize(c, t.created_by, did, t.policy_id, t.reference, name)
            status = ACTIVE
    # A pending device gets no id key: with it, ids name content (see services/access.py).
    return EnrollResponse(
        device_id=did,
        credential=credential,
        status=status,
        chunking=chunking_public(chunking, with_key=status == ACTIVE),
    )


def _refuse_orphaned(c: Connection, token_id: str, created_by: str) -> None:
    """A token is only as good as who issued it: a flex instance's, while that instance
    may serve (``flex_manage.refusal``); a user's, while that user exists, is enabled
    and may still enroll devices (``device.write``). A token outliving its creator's
    rights would enroll active devices for as long as it was made to last."""
    inst = c.execute(
        select(flex_instances.c.id).where(flex_instances.c.enroll_token_id == token_id)
    ).first()
    if inst is not None:
        why = flex_manage.refusal(c, inst.id)  # (not active, user disabled, expired...)
        if why is not None:
            raise AuthError(f"the enrollment token cannot be used: {why}")
        return
    u = c.execute(
        select(users_table.c.disabled, users_table.c.role).where(users_table.c.name == created_by)
    ).first()
    if u is None or u.disabled or "device.write" not in ROLES.get(u.role, frozenset()):
        raise AuthError(
            "the enrollment token's issuer may no longer enroll devices: ask for a new one"
        )


def chunking_public(chunking: ChunkingSecret, with_key: bool) -> ChunkingPublic:
    return ChunkingPublic(
        chunker_seed=chunking.chunker_seed,
        id_key=chunking.id_key.hex() if with_key else "",
        min_size=chunking.min_size,
        avg_size=chunking.avg_size,
        max_size=chunking.max_size,
    )


def find_device(c: Connection, ref: str) -> Device:
    return find_one(c, devices, ref, "hostname", "device")


def list_devices(engine: Engine, actor: Principal, pending: bool = False) -> list[DevicePublic]:
    actor.require("read")
    with read_tx(engine) as c:
        return _device_page(c, *([devices.c.status == PENDING] if pending else []))


def show_device(engine: Engine, actor: Principal, ref: str) -> DevicePublic:
    """One device with its hardware facts (``lamina device show``)."""
    actor.require("read")
    with read_tx(engine) as c:
        return _device_public(c, find_device(c, ref))


def reject(engine: Engine, actor: Principal, ref: str) -> DevicePublic:
    actor.require("device.write")
    with write_tx(engine) as c:
        d = find_device(c, ref)
        if d.status != PENDING:
            raise ConflictError(f"device {d.hostname} is {d.status}, not pending")
        c.execute(update(devices).where(devices.c.id == d.id).values(status=REJECTED))
        audit(c, actor.name, "device.reject", d.id, hostname=d.hostname)
        return _device_public(c, find_device(c, d.id))


def revoke(engine: Engine, actor: Principal, ref: str) -> DevicePublic:
    """Revoke a device's credential: every call it makes is refused from now on."""
    actor.require("device.write")
    with write_tx(engine) as c:
        d = find_device(c, ref)
        if d.status in (REVOKED, REJECTED, ARCHIVED):
            raise ConflictError(f"device {d.hostname} is {d.status} already")
        c.execute(update(devices).where(devices.c.id == d.id).values(status=REVOKED))
        audit(c, actor.name, "device.revoke", d.id, hostname=d.hostname, was=d.status)
        return _device_public(c, find_device(c, d.id))


# --- CVDs -----------------------------------------------------------------------
def _centralize(
    c: Connection, actor: str, device_id: str, policy_id: str, reference: bool, name: str | None
) -> str:
    d = c.execute(select(devices).where(devices.c.id == device_id)).one()
    if d.status != PENDING:
        raise ConflictError(
            f"device {d.hostname} is {d.status}: only a pending device is centralized"
        )
    p = c.execute(select(policies).where(policies.c.id == policy_id)).one()
    name = name or d.hostname
    if c.execute(select(cvds.c.id).where(cvds.c.name == name)).first():
        name = f"{name}-{device_id[:8]}"
    cid = new_id()
    c.execute(
        insert(cvds).values(
            id=cid,
            name=name,
            device_id=device_id,
            policy_id=policy_id,
            policy_version=p.version,
            reference=reference,
            state=ACTIVE,
            created=now(),
            last_sync=None,
            progress={},
            blobs_indexed=True,  # a new CVD owns nothing yet
        )
    )
    c.execute(update(devices).where(devices.c.id == device_id).values(status=ACTIVE))
    audit(c, actor, "cvd.centralize", cid, device=device_id, policy=p.name, reference=reference)
    return cid


def centralize(engine: Engine, actor: Principal, ref: str, req: CentralizeRequest) -> CvdPublic:
    """Make the pending device ``ref`` a CVD under the request's policy."""
    actor.require("device.write")
    with write_tx(engine) as c:
        d = find_device(c, ref)
        p = policy_service.find(c, req.policy)
        cid = _centralize(c, actor.name, d.id, p.id, req.reference, req.name)
        return _cvd_public(c, find_cvd(c, cid))


def find_cvd(c: Connection, ref: str) -> Cvd:
    return find_one(c, cvds, ref, "name", "CVD")


def _cvd_page(c: Connection, *where: ColumnElement[bool]) -> list[CvdPublic]:
    """CVDs with their device's hostname, policy name and snapshot count, in one query."""
    count = (
        select(func.count())
        .select_from(snapshots)
        .where(snapshots.c.source == literal(cvd_source(""), String) + cvds.c.id)
        .correlate(cvds)
        .scalar_subquery()
    )
    q = (
        select(
            cvds,
            devices.c.hostname.label("hostname"),
            policies.c.name.label("policy"),
            count.label("snapshots"),
        )
        .select_from(
            cvds.outerjoin(devices, devices.c.id == cvds.c.device_id).join(
                policies, policies.c.id == cvds.c.policy_id
            )
        )
        .where(*where)
        .order_by(cvds.c.created)
    )
    return [from_row(CvdPublic, r) for r in c.execute(q)]


def _cvd_public(c: Connection, r: Cvd) -> CvdPublic:
    return _cvd_page(c, cvds.c.id == r.id)[0]


def list_cvds(engine: Engine, actor: Principal) -> list[CvdPublic]:
    actor.require("read")
    with read_tx(engine) as c:
        return _cvd_page(c)


def show_cvd(engine: Engine, actor: Principal, ref: str) -> CvdPublic:
    """A CVD as a reader, or its own device, sees it (``cvd_for_access``)."""
    r = cvd_for_access(engine, actor, ref)
    with read_tx(engine) as c:
        return _cvd_public(c, r)


def archive(engine: Engine, actor: Principal, ref: str) -> CvdPublic:
    """Detach the device and revoke its credential; keep the CVD read-only with its snapshots."""
    actor.require("device.write")
    with write_tx(engine) as c:
        r = find_cvd(c, ref)
        if r.state == ARCHIVED:
            raise ConflictError(f"CVD {r.name} is archived already")
        c.execute(update(cvds).where(cvds.c.id == r.id).values(state=ARCHIVED))
        if r.device_id:
            c.execute(update(devices).where(devices.c.id == r.device_id).values(status=ARCHIVED))
        audit(c, actor.name, "cvd.archive", r.id, device=r.device_id, credential_revoked=True)
        return _cvd_public(c, find_cvd(c, r.id))


def cvd_for_access(engine: Engine, actor: Principal, ref: str, permission: str = "read") -> Cvd:
    """The CVD row if ``actor`` may reach it: its own device, or a user with ``permission``.

    Whether the CVD exists is told only to those who may reach it: the permission is asked
    first, and a device naming any CVD but its own gets the same answer whether or not that
    CVD exists (else its names, the endpoints' hostnames, could be listed by guessing)."""
    if actor.kind != "device":
        actor.require(permission)
    with read_tx(engine) as c:
        try:
            r = find_cvd(c, ref)
        except (NotFoundError, ConflictError):  # (ambiguous: more than one matches)
            if actor.kind == "device":
                raise ForbiddenError("a device may only reach its own CVD") from None
            raise
    if actor.kind == "device":
        if r.device_id != actor.id:
            raise ForbiddenError("a device may only reach its own CVD")
        if r.state != ACTIVE:
            raise ForbiddenError(f"CVD {r.name} is {r.state}: its device reads nothing of it")
        return r
    return r


# --- the agent's view -------------------------------------------------------------
def agent_config(
    engine: Engine,
    device: Principal | Presented,
    state: JsonObject,
    chunking: ChunkingSecret | None = None,
    facts: HardwareFacts | None = None,
    later: ProgressReports | None = None,
) -> AgentConfig:
    """The device's status and, once it has an active CVD, its policy and the chunking secret.

    ``facts`` (sent at the agent's start and after each sync) replace the device's
    facts; the hostname the agent reports with its state refreshes the device's. Facts
    equal to the stored ones are no change (``same_facts``: the agent sends them at its
    start and after each sync, mostly unchanged). A report that changes only volatile
    fields (``agent_events.worth_storing``) is answered from its one read: no write, so
    no wait for the write lock. So is one that keeps the agent's state and brings no
    event (a sync's progress) when ``later`` is given: it is kept there and written with
    the others a moment later. A report stored at once is answered from the same read
    too (storing it changes nothing the answer holds). A credential ``Presented`` is
    checked against the device row that read returns (``users.device_principal``)."""
    extra = [devices.c.agent_state, devices.c.last_seen, devices.c.hostname, devices.c.id]
    if facts is not None:
        extra.append(devices.c.facts)
    if isinstance(device, Principal):
        with read_once(engine) as c:
            was = c.execute(_agent_view(devices.c.id == device.id, *extra)).one()
    else:  # the credential is checked against the row this query reads: no query of its own
        generation = device.generation()
        with read_once(engine) as c:
            found = c.execute(
                _agent_view(devices.c.credential_hash == device.token_hash, *extra)
            ).first()
        device = users.device_principal(found, device, generation)
        assert found is not None  # device_principal refused it otherwise
        was = found
    answer = _agent_answer(was, device.id, chunking)
    if facts is not None and same_facts(was.facts, facts):
        facts = None  # the stored ones
    before = was.agent_state or {}
    if facts is None and not agent_events.worth_storing(before, state, aware(was.last_seen)):
        return answer
    if (
        facts is None
        and later is not None
        and state.get("hostname") in (None, was.hostname)
        and agent_events.same_state(before, state)
    ):
        later.put(device.id, state)
        return answer
    with write_tx(engine) as c:
        store_report(c, device.id, state, now(), facts=facts)
    return answer


def same_facts(stored: object, facts: HardwareFacts) -> bool:
    """Whether ``facts`` equal the device's stored facts (as the JSON column returns
    them): then storing them would rewrite the device row and its driver-match rows
    (``drivers_index.store``, a delete and an insert) for nothing."""
    try:
        return json.dumps(stored, sort_keys=True) == json.dumps(
            facts.model_dump(mode="json"), sort_keys=True
        )
    except (TypeError, ValueError):  # not JSON as stored: written again
        return False


def store_report(
    c: Connection,
    device_id: str,
    state: JsonObject | None,
    at: dt.datetime,
    newer_only: bool = False,
    *,
    facts: HardwareFacts | None = None,
) -> bool:
    """Store a device's report received ``at`` (its state, its CVD's progress, new facts)
    with the events it brings. ``newer_only``: not if a report received after ``at`` or
    a commit after it is stored (a report kept a moment, ``services/progress.py``: the
    commit empties the CVD's progress). True if stored."""
    old = c.execute(
        # the device row, locked, and its active CVD in one round trip
        select(
            devices.c.hostname,
            devices.c.agent_state,
            devices.c.last_seen,
            cvds.c.id.label("cvd_id"),
            cvds.c.last_sync,
        )
        .select_from(devices.outerjoin(cvds, _ACTIVE_CVD))
        .where(devices.c.id == device_id)
        .limit(1)  # one active CVD per device (``active_cvd`` takes the first)
        .with_for_update(of=devices)
    ).one_or_none()
    if old is None:
        return False  # the device is gone
    if newer_only and any(t is not None and aware(t) > at for t in (old.last_seen, old.last_sync)):
        return False  # a newer report, or a commit, is stored
    values: JsonObject = {"last_seen": at}
    if state is not None:
        if state.get("hostname") and state["hostname"] != old.hostname:
            # only a new name is written: the name is part of what a device
            # credential authenticates as, and writing it empties the server's
            # cache of verified credentials (``services/credentials.py``)
            values["hostname"] = state["hostname"]
        values["agent_state"] = agent_events.on_report(
            c, values.get("hostname", old.hostname), old.agent_state or {}, state
        )
    if facts is not None:
        values["facts"] = facts.model_dump()
        drivers_index.store(c, device_id, values["facts"])
    c.execute(update(devices).where(devices.c.id == device_id).values(**values))
    if old.cvd_id is not None and state is not None and "progress" in state:
        progress = update(cvds).where(cvds.c.id == old.cvd_id)
        if newer_only:
            # in the statement too: on PostgreSQL a commit of this CVD can land between
            # the read above and this write, and the row's condition is checked again
            # once its lock is ours (the commit's emptied progress must stay)
            progress = progress.where(or_(cvds.c.last_sync.is_(None), cvds.c.last_sync <= at))
        c.execute(progress.values(progress=state["progress"]))
    return True


def _agent_view(device: ColumnElement[bool], *extra: ColumnElement[Any]) -> Select[Any]:
    """What a poll answers, in one query (a poll's time under load is mostly its round
    trips, each waiting for the interpreter lock and the database): the status of the
    ``device`` (a condition on ``devices``: its id or its credential's hash), its active
    CVD and policy, the store's gc epoch, and the ``extra`` columns."""
    epoch = EPOCH_VALUE.scalar_subquery()  # the catalog's table: on the server's own engine
    return (
        select(
            devices.c.status,
            cvds.c.id.label("cvd_id"),
            cvds.c.policy_version,
            cvds.c.last_sync,
            policies.c.settings.label("policy"),
            epoch.label("gc_epoch"),
            *extra,
        )
        .select_from(
            devices.outerjoin(cvds, _ACTIVE_CVD).outerjoin(
                policies, policies.c.id == cvds.c.policy_id
            )
        )
        .where(device)
        .limit(1)  # one active CVD per device (``active_cvd`` takes the first)
    )


def _agent_answer(row: Row[Any], device_id: str, chunking: ChunkingSecret | None) -> AgentConfig:
    """The answer to a poll from its ``_agent_view`` row (the CVD's columns are None
    for a device without an active CVD)."""
    active = row.cvd_id is not None
    return AgentConfig(
        device_id=device_id,
        status=row.status,
        cvd_id=row.cvd_id,
        policy=PolicySettings(**row.policy) if active else None,
        policy_version=row.policy_version,
        last_sync=aware(row.last_sync),
        gc_epoch=int(row.gc_epoch or 0) if active else 0,
        chunking=chunking_public(chunking, True) if chunking and active else None,
        protocol=PROTOCOL_VERSION,
    )


def cvd_of_device(c: Connection, device_id: str) -> Cvd:
    """The device's active CVD row; ``NotFoundError`` if it has none."""
    cvd = active_cvd(c, device_id)
    if cvd is None:
        raise NotFoundError("this device has no active CVD (pending, rejected or archived)")
    return cvd


def policy_of(c: Connection, cvd: Cvd) -> PolicySettings:
    """The settings of the policy a CVD follows."""
    p = c.execute(select(policies.c.settings).where(policies.c.id == cvd.policy_id)).one()
    return PolicySettings(**p.settings)


def active_cvd_of_device(engine: Engine, device: Principal) -> Cvd:
    with read_tx(engine) as c:
        return cvd_of_device(c, device.id)
