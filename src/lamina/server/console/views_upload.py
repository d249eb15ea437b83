"""Uploads streamed from a console form: a flex image's disk (the API's ``POST
/flex/images/upload``, the CLI's ``lamina flex image upload``).

Its route checks the CSRF token itself (``StreamedRoute``): the token must come before
the file in the form, so a forged request writes nothing.
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from lamina.errors import IntegrityError, UsageError
from lamina.protocol.flex import MAX_IMAGE_SIZE
from lamina.server.console import upload
from lamina.server.console.web import Actor, Ctx, StreamedRoute, check_token, see_other
from lamina.server.services import flex_images

router = APIRouter(route_class=StreamedRoute, include_in_schema=False)
#: The console's upload path (its body limit is the image size limit, see ``app.py``).
IMAGE_UPLOAD = "/flex/images/upload"


def _int(fields: dict[str, str], name: str, default: int) -> int:
    text = fields.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit():
        raise UsageError(f"{name} must be a whole number, not {text[:20]!r}")
    return int(text)


@router.post(IMAGE_UPLOAD)
async def image_upload(request: Request, ctx: Ctx, actor: Actor) -> Response:
    """Register the uploaded disk as the next version of an image, if its SHA-256 is the
    one the form gives; the upload is removed whatever happens."""
    actor.require("flex.admin")  # before reading a byte of the body
    work = flex_images.tmp_dir(ctx.settings.data)
    disk = work / f"{secrets.token_hex(8)}.upload"
    try:
        fields, digest = await upload.stream_form(
            request,
            disk,
            "disk",
            MAX_IMAGE_SIZE,
            lambda before: check_token(request, before.get("csrf")),
        )
        check_token(request, fields.get("csrf"))
        expected = fields.get("sha256", "").strip().lower()
        if digest != expected:
            raise IntegrityError(
                f"the uploaded file's SHA-256 is {digest}, not the {expected or '(none given)'} "
                "the form gives: the upload was damaged or is another file"
            )
        img = await run_in_threadpool(
            flex_images.register,
            ctx.engine,
            ctx.store,
            actor,
            fields.get("name", "").strip(),
            disk,
            work,
            _int(fields, "memory_mib", 1024),
            _int(fields, "cpus", 1),
            fields.get("firmware", "bios"),
            {"kind": "upload", "sha256": digest},
        )
    finally:
        disk.unlink(missing_ok=True)
    return see_other(f"/flex/images/{img.id}")
