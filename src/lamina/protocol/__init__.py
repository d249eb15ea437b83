"""Request and response schemas shared by the server, the agent and the flex client.

Version 2 (version 1 without ``/blobs/delta``: a version-2 agent that gets 404
there fetches chunks as before). One schema per direction (``...Request`` from the caller, ``...Public``
or ``...Response`` back); ORM rows never go on the wire. Binary sync bundles
are msgpack (see ``lamina.protocol.bundle``), everything else JSON.
"""

from __future__ import annotations

PROTOCOL_VERSION = 2
