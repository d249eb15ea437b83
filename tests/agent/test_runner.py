"""The agent reads its work items into their kind's models: one it cannot read is refused
(reported failed, with the kind and the field), and the others still run."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.agent import sync as sync_mod
from lamina.agent.runner import Agent
from lamina.agent.state import load_status
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


def test_a_report_whose_answer_changes_nothing_writes_no_status_file(
    live: Live,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each status write is two fsyncs; an unchanged sync's cycle made five, two of them
    by reports whose answer (CVD, registration, policy version) was the file's already."""
    import lamina.agent.runner as runner

    _, state = live.enrolled_agent(tmp_path, "quiet-host")
    writes: list[dict[str, object]] = []
    save = runner.save_status

    def counted(folder: Path, status: runner.AgentStatus) -> None:
        writes.append(status.model_dump(mode="json"))
        save(folder, status)

    monkeypatch.setattr(runner, "save_status", counted)
    agent = Agent(state)
    try:
        agent.report()
        first = len(writes)
        agent.report()
        agent.report()
        assert len(writes) == first  # the same answer: the file holds it already
        on_disk = load_status(state).model_dump(mode="json")
        assert on_disk == agent.status.model_dump(mode="json")
        agent._save(state="syncing")
        agent._save(state="syncing", last_error=None)
        assert [w["state"] for w in writes[first:]] == ["syncing"]
    finally:
        agent.close()
    assert load_status(state).state == "syncing"


def test_an_unchanged_sync_makes_four_requests_and_two_status_writes(
    live: Live,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What an unchanged sync's cycle (a timer's ``agent run --once --sync``) costs besides
    its scan: the cycle's report, the work list, the commit and the report after it;
    ``status.json`` written at the sync's start and its end. A sync shorter than a second
    makes no progress report (its first is due a second after the "syncing" status: a
    stalled upload still shows its progress then, ``test_throttle``)."""
    import httpx

    import lamina.agent.runner as runner

    root, state = live.enrolled_agent(tmp_path, "timer-host")
    for i in range(600):
        (root / "etc" / f"f{i:03}").write_bytes(b"%d\n" % i)
    first = Agent(state)
    try:
        assert first.cycle(force_sync=True)["synced"]
    finally:
        first.close()
    requests: list[str] = []
    writes: list[str] = []
    save = runner.save_status

    def counted(folder: Path, status: runner.AgentStatus) -> None:
        writes.append(status.state)
        save(folder, status)

    def record(request: httpx.Request) -> None:
        requests.append(f"{request.method} {request.url.path.removeprefix('/api/v1')}")

    monkeypatch.setattr(runner, "save_status", counted)
    # "Shorter than a second" on any host, however loaded: the first report's due an
    # hour in, so what this test counts is the cycle's own, not the clock's.
    monkeypatch.setattr(sync_mod, "PROGRESS_SECONDS", 3600.0)
    agent = Agent(state)
    agent.client.http.event_hooks["request"].append(record)
    try:
        assert agent.cycle(force_sync=True)["synced"]
    finally:
        agent.close()
    assert requests == [
        "POST /agent/config",
        "GET /agent/work",
        "POST /agent/commit",
        "POST /agent/config",
    ]
    assert writes == ["syncing", "idle"]
