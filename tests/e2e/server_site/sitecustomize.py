"""Imported at start-up by the `lamina server` processes ``ServerProc`` starts (its folder
goes first on their ``PYTHONPATH``): Argon2id at its lowest cost, as in the test process
(``tests/conftest.py::_cheap_password_hashing``). The same algorithm and code path, without
64 MiB and three passes over four lanes per hash: each start hashes the admin's password and
each login verifies one, about 0.3 s of CPU each, and the KDF's cost is not what any of
those tests checks."""

from argon2 import PasswordHasher

from lamina.server import security

security._hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
