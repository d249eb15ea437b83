"""``Live`` whose logins wait as long as Argon2 needs on a loaded machine (the base class
uses httpx's 5-second default, which a busy 2-core CI runner can exceed)."""

from __future__ import annotations

import httpx

from tests.server.conftest import ADMIN_PASSWORD, API, Live

TIMEOUT = 120


class PatientLive(Live):
    def login(self, user: str = "admin", password: str = ADMIN_PASSWORD) -> httpx.Client:
        r = httpx.post(
            self.url + API + "/auth/login",
            json={"user": user, "password": password},
            timeout=TIMEOUT,
        )
        assert r.status_code == 200, r.text
        return self.client(r.json()["token"])
