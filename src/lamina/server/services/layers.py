"""Layers on the server: capture, record, list, assign with a dry run, enforce.

The computation lives in ``lamina.layers`` (pure, over trees); the services that read
and write the rows and the store around it are one module per job:

- ``layer_versions``: layers and versions, their public views, the shared lookups;
- ``layer_capture``: a base layer captured from a reference CVD; the rule-set preview;
- ``layer_recording``: an app layer recorded between two snapshots;
- ``layer_assign``: assignment with a dry run, delivery, enforce.

The routes, the console and the other services call them through this module.
"""

from __future__ import annotations

from lamina.server.services.layer_assign import assign as assign
from lamina.server.services.layer_assign import cvd_layer_state as cvd_layer_state
from lamina.server.services.layer_assign import enforce as enforce
from lamina.server.services.layer_assign import show_cvd_layers as show_cvd_layers
from lamina.server.services.layer_capture import capture as capture
from lamina.server.services.layer_capture import test_rules as test_rules
from lamina.server.services.layer_recording import FINALIZING as FINALIZING
from lamina.server.services.layer_recording import RECORD_STARTING as RECORD_STARTING
from lamina.server.services.layer_recording import RECORDING as RECORDING
from lamina.server.services.layer_recording import after_commit as after_commit
from lamina.server.services.layer_recording import finish_recording as finish_recording
from lamina.server.services.layer_recording import note_commit as note_commit
from lamina.server.services.layer_recording import pinned_snapshots as pinned_snapshots
from lamina.server.services.layer_recording import record_cancel as record_cancel
from lamina.server.services.layer_recording import record_finalize as record_finalize
from lamina.server.services.layer_recording import record_start as record_start
from lamina.server.services.layer_versions import list_layers as list_layers
from lamina.server.services.layer_versions import rules_of as rules_of
from lamina.server.services.layer_versions import show_layer as show_layer
