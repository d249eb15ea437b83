"""Finding 9: reading file contents needs ``data.read`` (administrator, helpdesk), and is audited.

The reproduction: a readonly user downloaded any endpoint's files (a file, a
restore as download through /blobs/read) and nothing was written to the audit log.
"""

from __future__ import annotations

from pathlib import Path

import msgpack

from lamina.cli.client import Api
from lamina.cli.cvd import id_key_of, remote_blobs
from lamina.store.blob import blob_id
from lamina.tree.restore import restore_tree
from tests.server.conftest import Live

SECRET = b"vpn pin 4711\n"


def test_readonly_cannot_read_contents_helpdesk_can_and_each_read_is_audited(live: Live) -> None:
    dev = live.device("desk-1")
    snap = dev.commit_files({b"vpnpin": [SECRET]})
    ro = live.user("ro", "readonly")
    hd = live.user("hd", "helpdesk")
    file = f"/cvds/{dev.cvd_id}/snapshots/{snap}/file"
    download = f"/cvds/{dev.cvd_id}/snapshots/{snap}/download"
    chunk = blob_id(dev.id_key, SECRET).hex()

    # readonly: names and metadata yes, contents no.
    assert [e["name"] for e in ro.get(f"/cvds/{dev.cvd_id}/snapshots/{snap}/browse").json()] == [
        "vpnpin"
    ]
    for r in (
        ro.get(file, params={"path": "vpnpin"}),
        ro.post(download, json={"paths": ["vpnpin"]}),
        ro.post("/blobs/read", json={"ids": [chunk]}),
    ):
        assert r.status_code == 403, r.text
        assert r.json()["code"] == "forbidden" and "data.read" in r.json()["message"]
    assert not [e for e in live.audit() if e["actor"] == "ro" and e["action"] != "auth.login"]

    # helpdesk: the same three reads work ...
    r = hd.get(file, params={"path": "vpnpin"})
    assert r.status_code == 200 and r.content == SECRET
    r = hd.post(download, json={"paths": ["vpnpin"]})
    assert r.status_code == 200 and r.json()["id"] == snap
    r = hd.post("/blobs/read", json={"ids": [chunk]})
    assert r.status_code == 200 and msgpack.unpackb(r.content) == [SECRET]

    # ... and each is in the audit log: CVD, snapshot, path, user.
    reads = [e for e in live.audit() if e["actor"] == "hd" and e["action"] != "auth.login"]
    by_action = {str(e["action"]): e for e in reads}
    assert set(by_action) == {"cvd.download", "cvd.restore_download", "blob.read"}
    got = by_action["cvd.download"]
    assert got["target"] == dev.cvd_id
    assert got["detail"] == {"snapshot": snap, "path": "vpnpin", "size": len(SECRET)}
    got = by_action["cvd.restore_download"]
    assert got["target"] == dev.cvd_id
    assert got["detail"] == {"snapshot": snap, "paths": ["vpnpin"]}
    assert by_action["blob.read"]["detail"] == {"blobs": 1, "size": len(SECRET), "requests": 1}


def test_administrator_has_data_read(live: Live) -> None:
    dev = live.device("desk-2")
    snap = dev.commit_files({b"notes": [b"hello"]})
    r = live.login().get(f"/cvds/{dev.cvd_id}/snapshots/{snap}/file", params={"path": "notes"})
    assert r.status_code == 200 and r.content == b"hello"


def test_a_download_hands_data_read_the_id_key_and_the_cli_restores_from_blobs_as_stored(
    live: Live, tmp_path: Path
) -> None:
    """Protocol version 4: a restore as download carries the store's id key (only to a
    caller allowed ``data.read``, who may read every blob anyway), so the admin's CLI asks
    ``/blobs/read`` for blobs as stored, inflates and hashes them itself, and the server
    neither inflates nor hashes."""
    dev = live.device("desk-3")
    snap = dev.commit_files({b"notes": [b"hello " * 1000, 7, b"world"], b"empty": []})
    hd = live.user("hd", "helpdesk")
    doc = hd.post(f"/cvds/{dev.cvd_id}/snapshots/{snap}/download", json={"paths": []}).json()
    assert id_key_of(doc) == dev.id_key

    api = Api(live.url, hd.headers["Authorization"].removeprefix("Bearer "))
    asked: list[dict[str, object]] = []

    def post(path: str, json: dict[str, object]) -> object:
        asked.append(json)
        return Api.post(api, path, json)

    api.post = post  # type: ignore[method-assign]  # the real call, each body recorded
    restore_tree(remote_blobs(api, id_key_of(doc)), bytes.fromhex(doc["root"]), tmp_path / "out")
    assert (tmp_path / "out" / "notes").read_bytes() == b"hello " * 1000 + bytes(7) + b"world"
    assert (tmp_path / "out" / "empty").read_bytes() == b""
    assert asked and all(body.get("stored") is True for body in asked)
