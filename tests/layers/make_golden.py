"""Rewrite the ``expected`` plan of every golden case from today's ``make_plan``.

Run only when a change is meant to change plans, then read ``git diff tests/layers/golden``:

    .venv/bin/python -m tests.layers.make_golden
"""

from __future__ import annotations

import json

from tests.layers.golden_plan import cases, load_case, run_case


def main() -> None:
    for path in cases():
        doc = load_case(path)
        doc["expected"] = run_case(doc["inputs"])
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
