"""The agent reads its work items into their kind's models: one it cannot read is refused
(reported failed, with the kind and the field), and the others still run."""

from __future__ import annotations

from pathlib import Path

from lamina.agent.runner import Agent
from tests.server.conftest import Live, live  # noqa: F401  (the fixture)


def test_a_work_item_with_malformed_parameters_is_reported_failed(
    live: Live,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, state = live.enrolled_agent(tmp_path, "work-host")
    admin = live.login()
    agent = Agent(state)
    try:
        cvd = admin.get("/cvds").json()[0]["id"]
        first = admin.post(f"/cvds/{cvd}/sync").json()["id"]
        second = admin.post(f"/cvds/{cvd}/sync").json()["id"]
        raw = agent.client.json("GET", "/agent/work")
        assert [w["task_id"] for w in raw] == [first, second]
        # What a newer server could send: a field this agent's model does not know.
        raw[0]["params"]["priority"] = "high"
        items = agent._read_work(raw)
        assert [(i.task_id, i.kind) for i in items] == [(second, "sync")]
        for item in items:
            agent.do(item, agent.report())
    finally:
        agent.close()
    refused = admin.get(f"/tasks/{first}").json()
    assert refused["state"] == "failed"
    assert "malformed parameters of a sync task: priority: Extra inputs" in refused["message"]
    assert admin.get(f"/tasks/{second}").json()["state"] == "done"
    assert len(admin.get(f"/cvds/{cvd}/snapshots").json()) == 1  # the other task still ran
