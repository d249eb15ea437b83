"""``bench.e2e_prof --perf``: the lines of ``perf report`` it prints."""

from __future__ import annotations

import pytest
from bench.e2e_prof import parse_perf_report

BY_DSO = """\
# To display the perf.data header info, please use --header/--header-only options.
#
# Samples: 13K of event 'cpu-clock:ppp'
#
# Overhead  Shared Object
# ........  ....................
#
    43.84%  libpython3.11.so.1.0
    17.60%  [kernel.kallsyms]
     0.10%  ld-linux-x86-64.so.2

"""

BY_SYMBOL = """\
# Overhead  Shared Object                               Symbol
#
     9.60%  libpython3.11.so.1.0                        [.] _PyEval_EvalFrameDefault
     3.40%  [kernel.kallsyms]                           [k] clear_page_erms
     1.90%  backend_c.cpython-311-x86_64-linux-gnu.so   [.] ZSTD_decompressSequences_bmi2.constprop.0
     0.53%  _ffi.abi3.so                                [.] 0x0000000000007a05
"""


def test_shares_by_shared_object_skip_comments_and_blank_lines() -> None:
    assert parse_perf_report(BY_DSO) == [
        (pytest.approx(0.4384), "libpython3.11.so.1.0", ""),
        (pytest.approx(0.176), "[kernel.kallsyms]", ""),
        (pytest.approx(0.001), "ld-linux-x86-64.so.2", ""),
    ]


def test_shares_by_symbol_name_the_object_and_the_symbol_user_or_kernel() -> None:
    rows = parse_perf_report(BY_SYMBOL)
    assert [(dso, sym) for _, dso, sym in rows] == [
        ("libpython3.11.so.1.0", "_PyEval_EvalFrameDefault"),
        ("[kernel.kallsyms]", "clear_page_erms"),
        ("backend_c.cpython-311-x86_64-linux-gnu.so", "ZSTD_decompressSequences_bmi2.constprop.0"),
        ("_ffi.abi3.so", "0x0000000000007a05"),
    ]
    assert rows[0][0] == pytest.approx(0.096)
