"""systemd units for the agent: the daemon, and ``agent boot`` early at boot.

``lamina agent install-service`` writes them with ``cli/units.py``, as it writes the
server's.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


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
