"""An agent asks for blobs as stored only from a server that says it speaks protocol 3
(``agent.blobs``, the agent config's ``protocol``)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from lamina.agent.blobs import agent_blobs
from lamina.agent.runner import Agent
from lamina.protocol import PROTOCOL_VERSION
from lamina.protocol.schemas import AgentConfig
from lamina.server.services import fleet
from lamina.tree.model import decode_tree
from tests.server.conftest import Live, live  # noqa: F401  (the fixture)


def test_an_agent_asks_for_stored_blobs_only_from_a_server_that_says_version_3(
    live: Live,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = live.login()
    root, state = live.enrolled_agent(tmp_path, "blobs-host")
    (root / "etc/motd").write_bytes(b"the message of the day\n" * 100)
    agent = Agent(state)
    sent: list[dict[str, object]] = []

    def record(request: httpx.Request) -> None:
        if request.url.path.endswith("/blobs/read"):
            sent.append(json.loads(request.content))

    try:
        assert agent.client.server_protocol == 2  # not heard from yet: plaintext
        cfg = agent.report()
        agent.sync(cfg)
        tree = bytes.fromhex(admin.get(f"/cvds/{cfg.cvd_id}/snapshots").json()[-1]["root"])
        agent.client.http.event_hooks["request"].append(record)
        for version in (2, 3):
            monkeypatch.setattr(fleet, "PROTOCOL_VERSION", version)
            assert agent.report().protocol == agent.client.server_protocol == version
            blobs = agent_blobs(agent.client, agent.st.chunking.id_key)
            assert {e.name for e in decode_tree(blobs.get(tree))} == {b"etc"}
    finally:
        agent.close()
    assert ["stored" in body for body in sent] == [False, True]
    assert admin.get("/health").json()["protocol"] == PROTOCOL_VERSION
    # A server of version 2 names no version: the agent takes it for 2.
    old = {"device_id": "d", "status": "active", "cvd_id": None, "policy": None}
    assert AgentConfig(**old, policy_version=None, last_sync=None).protocol == 2
