from __future__ import annotations

from lamina.cli import main

main()
