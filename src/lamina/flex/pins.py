"""The server signing keys this laptop trusts: pinned on first use, a change refused."""

from __future__ import annotations

import json
from pathlib import Path

from lamina.errors import IntegrityError
from lamina.protocol.flex import FlexKeyPublic, load_public_key
from lamina.store.atomic import write_atomic


class KeyPins:
    """The server signing keys this laptop trusts, one per server URL, pinned on first use.

    A JSON object ``{url: {"key_id", "public_key"}}`` in a 0600 file beside the login session.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise IntegrityError(f"{self.path} is damaged: {e}") from e
        if not isinstance(doc, dict):
            raise IntegrityError(f"{self.path} is damaged: not a JSON object")
        return doc

    def check(self, url: str, offered: FlexKeyPublic) -> str:
        """The pinned key for ``url`` (pinning ``offered`` if there is none); refuses a change."""
        load_public_key(offered.public_key)
        pins = self._load()
        pinned = pins.get(url)
        if pinned is None:
            pins[url] = {"key_id": offered.key_id, "public_key": offered.public_key}
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self.path, json.dumps(pins, indent=1, sort_keys=True).encode())
            return offered.public_key
        if pinned.get("public_key") != offered.public_key:
            raise IntegrityError(
                f"the server at {url} offers flex signing key {offered.key_id[:16]}, but this laptop "
                f"pinned {str(pinned.get('key_id'))[:16]}: refused (if the server's key was really "
                f"replaced, remove its entry from {self.path})"
            )
        return pinned["public_key"]
