"""Finding 13(b), download side: a file with a huge hole streams back; the server never holds it.

The reproduction: a device committed a file whose content is one hole of 2**40
bytes; ``GET .../file`` did ``b"\\0" * size`` and the server process died.
"""

from __future__ import annotations

from tests.server.conftest import Live

HUGE = 2**40
MiB = 1024 * 1024


def test_a_file_with_a_huge_hole_streams_back(live: Live) -> None:
    dev = live.device("desk-sparse")
    snap = dev.commit_files({b"sparse": [b"head", HUGE]})
    url = f"/cvds/{dev.cvd_id}/snapshots/{snap}/file"
    with live.login().stream("GET", url, params={"path": "sparse"}) as r:
        assert r.status_code == 200
        assert int(r.headers["content-length"]) == 4 + HUGE
        got = b""
        for part in r.iter_raw():
            got += part
            if len(got) >= 3 * MiB:
                break
    assert got[:4] == b"head" and got[4:] == bytes(len(got) - 4)
    # The server is still there, and answers the next request.
    assert live.login().get("/health").status_code == 200
