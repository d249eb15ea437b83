"""Enrolling an endpoint: register with the server once and write the state folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lamina.agent import facts
from lamina.agent.state import (
    AgentState,
    AgentStatus,
    StateLock,
    has_credential,
    save_state,
    save_status,
)
from lamina.agent.transport import AgentClient, check_server_url, fetch_certificate
from lamina.errors import ConflictError, UsageError
from lamina.protocol.endpoint import EnrollRequest, EnrollResponse


def enroll(
    server: str,
    token: str,
    root: Path,
    state_dir: Path,
    ca_cert: Path | None = None,
    *,
    fingerprint: str | None = None,
    insecure: bool = False,
    force: bool = False,
    facts_file: Path | None = None,
    sysfs: Path = facts.SYSFS,
) -> AgentState:
    """Register with the server and write the state folder.

    A folder that already holds a credential is refused unless ``force``: enrolling
    again makes a new device and loses the old one's credential. ``facts_file`` is a
    JSON object merged over the detected facts, now and at every refresh.
    """
    override = facts.load_override(facts_file) if facts_file else {}
    if not root.is_dir():
        raise UsageError(f"the root {root} is not a folder")
    if has_credential(state_dir) and not force:
        raise ConflictError(
            f"{state_dir} already holds an enrolled agent's credential; "
            "enrolling again replaces it (pass --force to do so)"
        )
    check_server_url(server, insecure)
    if ca_cert and fingerprint:
        raise UsageError("give either --ca-cert or --fingerprint, not both")
    lock = StateLock(state_dir)  # not while an agent runs on this folder
    try:
        return _enroll(
            server, token, root, state_dir, ca_cert, fingerprint, insecure, override, sysfs
        )
    finally:
        lock.release()


def _enroll(
    server: str,
    token: str,
    root: Path,
    state_dir: Path,
    ca_cert: Path | None,
    fingerprint: str | None,
    insecure: bool,
    override: dict[str, Any],
    sysfs: Path,
) -> AgentState:
    try:
        pem = ca_cert.read_text() if ca_cert else fetch_certificate(server, fingerprint)
    except OSError as e:
        raise UsageError(f"cannot read the CA certificate {ca_cert}: {e.strerror}") from e
    client = AgentClient(server, None, pem, ca=ca_cert is not None, insecure=insecure)
    try:
        # A new device waits (pending): its packages go with its facts (format 4).
        found = facts.gather(root, sysfs, override, packages=True)
        req = EnrollRequest(token=token, facts=found)
        resp = EnrollResponse(**client.json("POST", "/agent/enroll", json=req.model_dump()))
    finally:
        client.close()
    st = AgentState(
        server=server,
        device_id=resp.device_id,
        credential=resp.credential,
        root=str(root.resolve()),
        chunker_seed=resp.chunking.chunker_seed,
        id_key=resp.chunking.id_key,
        min_size=resp.chunking.min_size,
        avg_size=resp.chunking.avg_size,
        max_size=resp.chunking.max_size,
        pinned_cert=pem,
        pinned_is_ca=ca_cert is not None,
        insecure=insecure,
        facts=override,
        sysfs=str(sysfs),
    )
    save_state(state_dir, st)
    save_status(state_dir, AgentStatus(device_id=st.device_id, registration=resp.status))
    return st
