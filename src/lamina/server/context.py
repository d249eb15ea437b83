"""What a running server holds: settings, the database engine, the store."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine

from lamina.config import ServerSettings
from lamina.server.services.credentials import DeviceCredentials
from lamina.server.services.fleet import store_report
from lamina.server.services.inflight import Sharing
from lamina.server.services.progress import ProgressReports
from lamina.server.services.read_audit import ReadAudit
from lamina.server.services.tasks import store_progress
from lamina.store.repository import Store


@dataclass
class ServerContext:
    settings: ServerSettings
    engine: Engine
    store: Store
    #: Users' blob reads, one audit row per user per window (flushed when the app stops).
    reads: ReadAudit = field(init=False)
    #: Device credentials verified by this process (``services/credentials.py``).
    credentials: DeviceCredentials = field(init=False)
    #: Agents' progress reports waiting to be written, all at once (written when the app stops).
    progress: ProgressReports = field(init=False)
    #: Running tasks' progress reports waiting to be written, all at once (alike).
    task_progress: ProgressReports = field(init=False)

    def __post_init__(self) -> None:
        self.reads = ReadAudit(self.engine)
        self.credentials = DeviceCredentials(self.engine)
        self.progress = ProgressReports(self.engine, store_report)
        self.task_progress = ProgressReports(self.engine, store_progress)

    @property
    def sharing(self) -> Sharing:
        """Cross-endpoint dedup as the settings ask (``services/inflight.py``)."""
        return Sharing(self.settings.share_threshold, self.settings.claim_lease)
