"""Hypothesis strategies shared by the parsers' property tests.

Every property test runs with ``PARSER_SETTINGS``: derandomized (the same examples on
every run, so a pass or a failure never depends on luck) and without a deadline
(the machine is shared; no wall-clock thresholds). 75 examples per test: these tests
were the largest share of the engine's test time (tests/store, tests/tree, tests/protocol),
and on a loaded 2-core box one of them ran into the 300 s timeout at 150.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PARSER_SETTINGS = settings(
    derandomize=True,
    deadline=None,
    max_examples=75,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Scalars msgpack encodes, with the edges a parser trips on: bools, huge and negative
#: ints, floats (inf, nan), empty and non-UTF-8 bytes.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=40),
)


def msgpack_values(keys: list[str] | None = None) -> st.SearchStrategy[Any]:
    """Nested msgpack-able values; maps favour ``keys`` so structures get past the first check."""
    key = st.sampled_from(keys) if keys else st.text(max_size=8)
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=6),
            st.dictionaries(st.one_of(key, st.text(max_size=4)), inner, max_size=8),
        ),
        max_leaves=40,
    )


def packb(value: Any) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """``data`` with a byte flipped, cut short, or with bytes inserted: never ``data`` itself."""
    n = len(data)

    def flip(pos: int, x: int) -> bytes:
        b = bytearray(data)
        b[pos % n] ^= x
        return bytes(b)

    return st.one_of(
        st.builds(flip, st.integers(0, max(n - 1, 0)), st.integers(1, 255)),
        st.builds(lambda k: data[: k % max(n, 1)], st.integers(0, max(n - 1, 0))),
        st.builds(
            lambda k, extra: data[: k % (n + 1)] + extra + data[k % (n + 1) :],
            st.integers(0, n),
            st.binary(min_size=1, max_size=8),
        ),
    )
