"""Issue 12's goals, one table for the printed tables and the README's (bench/report.py).

A goal bounds either Lamina's ratio to restic (the median of Lamina over the median of
restic, as the results files hold it) or one of Lamina's own figures (CPU seconds per GiB
of the first sync). The same goals hold for both corpora.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    bound: float
    #: "ratio": Lamina / restic must be at most ``bound``; "lamina": Lamina's own figure.
    of: str = "ratio"
    #: the unit of Lamina's own figure (none for a ratio)
    unit: str = ""

    def met(self, ratio: float | None, lamina: float | None) -> bool | None:
        """Whether the figure is within the bound; None when it was not measured."""
        value = ratio if self.of == "ratio" else lamina
        return None if value is None else value <= self.bound

    def label(self) -> str:
        return f"≤ {self.bound:g} {self.unit}".rstrip()


#: bench.run (the engine, in process), by figure key.
ENGINE: dict[str, Goal] = {
    "initial_backup_s": Goal(0.5),
    "unchanged_backup_s": Goal(0.25),
    "changed_backup_s": Goal(0.4),
    "restore_s": Goal(0.4),
    "endpoint2_backup_s": Goal(0.5),
}

#: bench.e2e (agent -> server on loopback), by figure key.
E2E: dict[str, Goal] = {
    "initial_backup_s": Goal(0.8),
    "unchanged_backup_s": Goal(0.3),
    "changed_backup_s": Goal(0.6),
    "restore_s": Goal(0.6),
    "first_cpu_per_gib_s": Goal(3.0, "lamina", "s/GiB"),
    "first_server_cpu_per_gib_s": Goal(1.5, "lamina", "s/GiB"),
}

#: The layer update's downloaded / changed bytes (bench.e2e's step 6).
LAYER_UPDATE = Goal(1.0)


def verdict(goal: Goal | None, ratio: float | None, lamina: float | None) -> tuple[str, str]:
    """The ``goal`` and ``met`` cells of a table row ("" for a figure without a goal)."""
    if goal is None:
        return "", ""
    met = goal.met(ratio, lamina)
    return goal.label(), {None: "—", True: "yes", False: "no"}[met]
