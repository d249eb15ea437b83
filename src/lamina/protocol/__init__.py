"""Request and response schemas shared by the server, the agent and the flex client.

Version 5 (version 4 plus ``/blobs/trees``: a layer delivery's folders several to one
zstd frame; an agent asks it only from a server that says 5 or more, and takes a 404
there for "read them through ``/blobs/read``"). Version 4 (version 3 plus ``id_key`` in the answer to a restore as download, so an
admin's CLI reads blobs as stored too; a version-3 server sends none, and the CLI then
reads plaintext). Version 3 (version 2 plus ``stored`` in ``/blobs/read``: blobs sent only decrypted,
for an agent that inflates and hashes them). A server of version 3 says so: the agent
config and ``/health`` carry ``protocol``, the version it speaks; a version-2 server
sends no such field (the agent takes it for 2) and refuses ``stored``, so an agent
asks for ``stored`` only from a server that says 3 or more. Version 2 is version 1
with ``/blobs/delta`` (a version-2 agent that gets 404 there fetches chunks as
before). One schema per direction (``...Request`` from the caller, ``...Public``
or ``...Response`` back); ORM rows never go on the wire. Binary sync bundles
are msgpack (see ``lamina.protocol.bundle``), everything else JSON.
"""

from __future__ import annotations

PROTOCOL_VERSION = 5
#: The version a server that names none speaks (it predates the field).
UNNAMED_VERSION = 2
#: The first version whose ``/blobs/read`` answers ``stored``.
STORED_BLOBS_SINCE = 3
#: The first version that answers ``/blobs/trees``.
TREES_SINCE = 5
