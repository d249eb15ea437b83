"""Finding 20: plain http is refused unless the server is on loopback or ``--insecure`` is given."""

from __future__ import annotations

import pytest

from lamina.agent.transport import AgentClient, check_server_url, is_loopback
from lamina.errors import UsageError


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8470",
        "http://127.0.0.2:8470",
        "http://localhost:8470",
        "http://[::1]:8470",
        "https://lamina.example:8470",
        "https://192.0.2.7",
    ],
)
def test_allowed_without_insecure(url: str) -> None:
    check_server_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://192.0.2.7:8470",
        "http://lamina.example:8470",
        "http://10.0.0.1",
        "http://[2001:db8::1]:8470",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io",
    ],
)
def test_plain_http_to_another_host_is_refused(url: str) -> None:
    with pytest.raises(UsageError, match=r"refusing plain http.*--insecure") as e:
        check_server_url(url)
    assert "\n" not in str(e.value)
    check_server_url(url, insecure=True)
    # The client refuses it too (before any connection is made).
    with pytest.raises(UsageError, match="--insecure"):
        AgentClient(url, "lmd_x", None)
    AgentClient(url, "lmd_x", None, insecure=True).close()


@pytest.mark.parametrize("url", ["ftp://192.0.2.7", "192.0.2.7:8470", "https://", "http:///x"])
def test_not_a_server_url(url: str) -> None:
    with pytest.raises(UsageError, match="must be https://"):
        check_server_url(url, insecure=True)


def test_loopback_names_no_lookup() -> None:
    assert is_loopback("127.9.9.9") and is_loopback("::1") and is_loopback("LOCALHOST")
    assert not is_loopback("0.0.0.0") and not is_loopback("lamina") and not is_loopback("::")
