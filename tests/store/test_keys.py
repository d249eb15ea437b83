from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from lamina.errors import ConflictError, NotFoundError, StoreKeyError
from lamina.store.keys import StoreKeys, read_keyfile, write_keyfile


def test_keyfile_round_trip_mode_0600(tmp_path: Path) -> None:
    keys = StoreKeys.generate()
    path = tmp_path / "keys.json"
    write_keyfile(path, keys)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_keyfile(path) == keys


def test_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    write_keyfile(path, StoreKeys.generate())
    with pytest.raises(ConflictError):
        write_keyfile(path, StoreKeys.generate())


def test_sealed_keyfile_needs_the_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LAMINA_STORE_PASSPHRASE", raising=False)
    keys = StoreKeys.generate()
    path = tmp_path / "keys.json"
    write_keyfile(path, keys, passphrase="correct horse")
    raw = path.read_text()
    assert keys.data_key.hex() not in raw and "data_key" not in raw
    with pytest.raises(StoreKeyError, match="LAMINA_STORE_PASSPHRASE"):
        read_keyfile(path)
    with pytest.raises(StoreKeyError, match="wrong passphrase"):
        read_keyfile(path, "wrong")
    assert read_keyfile(path, "correct horse") == keys
    # The environment is read by the programs' edges, never by the store itself:
    monkeypatch.setenv("LAMINA_STORE_PASSPHRASE", "correct horse")
    with pytest.raises(StoreKeyError, match="sealed"):
        read_keyfile(path)


def test_the_passphrase_comes_from_the_cli_and_the_server_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lamina.cli.store_options import location
    from lamina.config import ServerSettings

    monkeypatch.setenv("LAMINA_STORE_PASSPHRASE", "correct horse")
    assert location(tmp_path, None, None, None).passphrase == "correct horse"
    # the server reads its settings as every command does: flags, environment, file
    assert ServerSettings.load(None, tmp_path / "absent.toml").store_passphrase == "correct horse"
    monkeypatch.delenv("LAMINA_STORE_PASSPHRASE")
    assert location(tmp_path, None, None, None).passphrase is None


def test_damaged_keyfiles(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    with pytest.raises(NotFoundError):
        read_keyfile(path)
    path.write_text("{not json")
    with pytest.raises(StoreKeyError, match="JSON"):
        read_keyfile(path)
    path.write_text(json.dumps({"lamina_keyfile": 99}))
    with pytest.raises(StoreKeyError, match="version"):
        read_keyfile(path)
    path.write_text(json.dumps({"lamina_keyfile": 1, "store_id": "x"}))
    with pytest.raises(StoreKeyError, match="missing"):
        read_keyfile(path)
