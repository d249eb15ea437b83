"""A managed flex guest's enrollment, handed over by the flex client through QEMU's fw_cfg.

The laptop's ``lamina flex-client launch`` gives QEMU ``-fw_cfg name=opt/org.lamina/enroll``
holding the lease's ``ManageInfo`` (JSON: server URL and a one-use enrollment token bound
to the instance); inside the guest the kernel's ``qemu_fw_cfg`` module shows it at
:data:`FW_CFG_ENROLL`, and ``lamina agent enroll --from-fw-cfg`` reads it from there.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from lamina.errors import IntegrityError, NotFoundError
from lamina.protocol.flex import ManageInfo

FW_CFG_ENROLL = Path("/sys/firmware/qemu_fw_cfg/by_name/opt/org.lamina/enroll/raw")
MAX_BYTES = 64 * 1024


def read_enrollment(path: Path = FW_CFG_ENROLL) -> ManageInfo:
    """The enrollment the flex client handed this guest; ``NotFoundError`` when there is none
    (not a managed flex guest, or the ``qemu_fw_cfg`` module is not loaded)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise NotFoundError(
            f"no flex enrollment at {path}: not a managed flex guest, or the qemu_fw_cfg "
            "kernel module is not loaded (modprobe qemu_fw_cfg)"
        ) from None
    if len(raw) > MAX_BYTES:
        raise IntegrityError(f"the flex enrollment at {path} is larger than {MAX_BYTES} bytes")
    try:
        return ManageInfo.model_validate_json(raw)
    except ValidationError as e:
        raise IntegrityError(
            f"the flex enrollment at {path} is not valid: {e.errors()[0]['msg']}"
        ) from e
