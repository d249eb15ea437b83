"""The backup programs under test (Lamina, restic, borg), each behind one interface."""

from __future__ import annotations

import abc
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import method
from bench.common import PASSWORD, ROOT, CommandFailed, Ran, TreeSize, run_cmd, say, tree_size, warn


class Tool(abc.ABC):
    """One backup program under test; subclasses run its commands."""

    name = ""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self.env = env
        self.repo = work / "repos" / self.name
        self.failed: str | None = None
        self.version = ""

    @abc.abstractmethod
    def available(self) -> str | None:
        """The tool's version, or None if it is not installed."""
        ...

    @abc.abstractmethod
    def init(self) -> Ran: ...

    @abc.abstractmethod
    def backup(self, src: Path, label: str, endpoint: str | None) -> tuple[Ran, dict[str, Any]]: ...

    @abc.abstractmethod
    def restore(self, label: str, out: Path, corpus: Path) -> tuple[Ran, Path]:
        """Restore the latest snapshot into ``out``; return the run and the corpus root in it."""
        ...

    @abc.abstractmethod
    def noop(self) -> Ran:
        """A command that opens the repository and lists snapshots (fixed cost per run)."""
        ...

    def cache_dirs(self) -> list[Path]:
        return []

    def repo_size(self) -> TreeSize:
        return tree_size(self.repo, skip=self.cache_dirs())

    def extra_stats(self) -> dict[str, Any]:
        return {}


class Lamina(Tool):
    name = "lamina"

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        super().__init__(work, env)
        exe = Path(sys.executable).parent / "lamina"
        self.exe = os.fspath(exe) if exe.exists() else (shutil.which("lamina") or "lamina")

    def _cmd(self, *args: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
        return [self.exe, *args, "--data", self.repo]

    def available(self) -> str | None:
        if not (os.path.exists(self.exe) or shutil.which(self.exe)):
            return None
        r = run_cmd([self.exe, "version"], env=self.env, sync_first=False)
        ver = r.stdout.strip()
        try:
            rev = subprocess.run(
                ["git", "-C", os.fspath(ROOT), "describe", "--always", "--dirty"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            ver += f" (git {rev})"
        except (OSError, subprocess.CalledProcessError):
            pass
        return ver

    def init(self) -> Ran:
        return run_cmd(self._cmd("store", "init", "--json"), env=self.env)

    def backup(self, src: Path, label: str, endpoint: str | None) -> tuple[Ran, dict[str, Any]]:
        extra: list[str] = ["--source", f"{endpoint}:{src}"] if endpoint else []
        r = run_cmd(self._cmd("snapshot", "create", src, *extra, "--json"), env=self.env)
        summary: dict[str, Any] = json.loads(r.stdout)
        if summary.get("errors"):
            warn(f"lamina skipped {len(summary['errors'])} files: {summary['errors'][:5]}")
        return r, summary

    def restore(self, label: str, out: Path, corpus: Path) -> tuple[Ran, Path]:
        # restic and borg keep owners and setuid/setgid bits: so does Lamina with these flags
        r = run_cmd(
            self._cmd(
                "snapshot", "restore", "latest", "-o", out, "--json", *method.exact_restore_flags()
            ),
            env=self.env,
        )
        doc = json.loads(r.stdout)
        if doc.get("errors"):
            warn(f"lamina restore reported {len(doc['errors'])} errors: {doc['errors'][:5]}")
        return r, out

    def noop(self) -> Ran:
        return run_cmd(self._cmd("snapshot", "list", "--json"), env=self.env, sync_first=False)

    def cache_dirs(self) -> list[Path]:
        return [self.repo / "cache"]

    def extra_stats(self) -> dict[str, Any]:
        r = run_cmd(self._cmd("store", "stats", "--json"), env=self.env, sync_first=False)
        doc: dict[str, Any] = json.loads(r.stdout)
        parts = {}
        for child in sorted(self.repo.iterdir()):
            parts[child.name] = tree_size(child).disk if child.is_dir() else child.stat().st_size
        doc["parts_on_disk"] = parts
        return doc


class Restic(Tool):
    name = "restic"

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        super().__init__(work, env)
        self.cache = work / "cache" / "restic"
        self.env = {
            **env,
            "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_REPOSITORY": os.fspath(self.repo),
            "RESTIC_CACHE_DIR": os.fspath(self.cache),
        }

    def available(self) -> str | None:
        if not shutil.which("restic"):
            return None
        return run_cmd(["restic", "version"], env=self.env, sync_first=False).stdout.strip()

    def init(self) -> Ran:
        return run_cmd(["restic", "init"], env=self.env)

    def backup(self, src: Path, label: str, endpoint: str | None) -> tuple[Ran, dict[str, Any]]:
        extra = ["--host", endpoint] if endpoint else []
        # exit 3: some source files could not be read (a warning; reported).
        r = run_cmd(["restic", "backup", "--json", *extra, src], env=self.env, warn_codes=(3,))
        summary: dict[str, Any] = {}
        for line in r.stdout.splitlines():
            if '"summary"' in line:
                summary = json.loads(line)
        return r, summary

    def restore(self, label: str, out: Path, corpus: Path) -> tuple[Ran, Path]:
        r = run_cmd(["restic", "restore", "latest", "--target", out], env=self.env)
        inner = out / corpus.resolve().relative_to("/")
        return r, inner if inner.is_dir() else out

    def noop(self) -> Ran:
        return run_cmd(["restic", "snapshots", "--json"], env=self.env, sync_first=False)

    def cache_dirs(self) -> list[Path]:
        return [self.cache]

    def extra_stats(self) -> dict[str, Any]:
        r = run_cmd(
            ["restic", "stats", "--json", "--mode", "raw-data"], env=self.env, sync_first=False
        )
        doc: dict[str, Any] = json.loads(r.stdout)
        doc["cache_on_disk"] = tree_size(self.cache).disk if self.cache.exists() else 0
        return doc


class Borg(Tool):
    name = "borg"

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        super().__init__(work, env)
        self.base = work / "cache" / "borg"
        self.env = {
            **env,
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_BASE_DIR": os.fspath(self.base),  # cache, keys and security dirs
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def available(self) -> str | None:
        if not shutil.which("borg"):
            return None
        return run_cmd(["borg", "--version"], env=self.env, sync_first=False).stdout.strip()

    def init(self) -> Ran:
        # borg init makes no parent folder, and borg may be the first tool of a pass
        self.repo.parent.mkdir(parents=True, exist_ok=True)
        return run_cmd(["borg", "init", "-e", "repokey", self.repo], env=self.env)

    def backup(self, src: Path, label: str, endpoint: str | None) -> tuple[Ran, dict[str, Any]]:
        # Run from inside the tree so archives hold relative paths ("usr/bin/...").
        # exit 1: warnings (e.g. a file changed while read); reported.
        r = run_cmd(
            ["borg", "create", "--json", f"{self.repo}::{label}", "."],
            env=self.env,
            cwd=src,
            warn_codes=(1,),
        )
        try:
            doc = json.loads(r.stdout)
            summary: dict[str, Any] = doc.get("archive", {}).get("stats", {})
        except json.JSONDecodeError:
            summary = {}
        return r, summary

    def restore(self, label: str, out: Path, corpus: Path) -> tuple[Ran, Path]:
        out.mkdir(parents=True, exist_ok=True)
        r = run_cmd(["borg", "extract", f"{self.repo}::{label}"], env=self.env, cwd=out)
        return r, out

    def noop(self) -> Ran:
        return run_cmd(["borg", "list", "--short", self.repo], env=self.env, sync_first=False)

    def cache_dirs(self) -> list[Path]:
        return [self.base]

    def extra_stats(self) -> dict[str, Any]:
        r = run_cmd(["borg", "info", "--json", self.repo], env=self.env, sync_first=False)
        doc: dict[str, Any] = json.loads(r.stdout).get("cache", {}).get("stats", {})
        doc["cache_on_disk"] = tree_size(self.base).disk if self.base.exists() else 0
        return doc


TOOL_CLASSES: dict[str, type[Tool]] = {"lamina": Lamina, "restic": Restic, "borg": Borg}


def find_tools(
    names: Sequence[str], work: Path, env: dict[str, str]
) -> tuple[list[Tool], dict[str, str]]:
    """The tools that run here, and why the others are skipped (nothing is installed)."""
    tools: list[Tool] = []
    skipped: dict[str, str] = {}
    for name in names:
        t = TOOL_CLASSES[name](work, env)
        try:
            ver = t.available()
        except CommandFailed as e:
            ver = None
            say(str(e), "red")
        if ver is None:
            skipped[name] = f"{name} is not installed (or does not run); skipped"
            say(
                f"{name} NOT FOUND: skipping it (nothing is installed by this benchmark)",
                "bold yellow",
            )
            continue
        t.version = ver
        tools.append(t)
        say(f"{name}: {ver.splitlines()[0]}")
    return tools, skipped
