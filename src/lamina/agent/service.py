"""systemd units for the agent: the daemon, and ``agent boot`` early at boot."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

UNIT_DIR = Path("/etc/systemd/system")


def units(state_dir: Path, executable: str | None = None) -> dict[str, str]:
    exe = executable or shutil.which("lamina") or f"{sys.executable} -m lamina.cli"
    state = state_dir.resolve()
    return {
        "lamina-agent-boot.service": f"""[Unit]
Description=Lamina: apply staged layer updates and reverts before services start
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target network-pre.target
ConditionPathExists={state}/agent.json

[Service]
Type=oneshot
ExecStart={exe} agent boot --state {state}
RemainAfterExit=yes
TimeoutStartSec=infinity

[Install]
WantedBy=sysinit.target
""",
        "lamina-agent.service": f"""[Unit]
Description=Lamina agent: keeps this endpoint's CVD up to date
Wants=network-online.target
After=network-online.target lamina-agent-boot.service

[Service]
Type=simple
ExecStart={exe} agent run --state {state}
Restart=always
RestartSec=30
Nice=10
IOSchedulingClass=idle

[Install]
WantedBy=multi-user.target
""",
    }


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def install(state_dir: Path, unit_dir: Path = UNIT_DIR, enable: bool = True) -> list[Path]:
    unit_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in units(state_dir).items():
        path = unit_dir / name
        path.write_text(text)
        written.append(path)
    if enable and unit_dir == UNIT_DIR and systemd_running():
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        subprocess.run(["systemctl", "enable", *units(state_dir)], check=True)
    return written
