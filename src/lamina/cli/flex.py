"""``lamina flex ...`` (images, policies, entitlements, instances) and ``lamina group ...``:
the admin side of flex. Each command parses, calls the API, prints."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from lamina.cli.api_commands import ApiCommands
from lamina.cli.client import Api
from lamina.cli.common import GroupOption, JsonOpt, emit, option_group, parse_duration
from lamina.cli.flex_vm import read_vm
from lamina.cli.output import human_bytes
from lamina.cli.progress import byte_progress
from lamina.errors import UsageError
from lamina.protocol.flex import USB_CLASSES

app = typer.Typer(
    help="Flex: images, restriction policies, entitlements and instances (admin side).",
    no_args_is_help=True,
)
image_app = typer.Typer(help="Flex images: register, list, show, delete.", no_args_is_help=True)
policy_app = typer.Typer(help="Flex restriction policies.", no_args_is_help=True)
entitlement_app = typer.Typer(help="Entitlements: who may run which image.", no_args_is_help=True)
instance_app = typer.Typer(help="Flex instances out on laptops.", no_args_is_help=True)
group_app = typer.Typer(help="Groups of users (entitlements name groups).", no_args_is_help=True)
app.add_typer(image_app, name="image")
app.add_typer(policy_app, name="policy")
app.add_typer(entitlement_app, name="entitlement")
app.add_typer(instance_app, name="instance")

UPLOAD_BLOCK = 1024 * 1024

ImageArg = Annotated[str, typer.Argument(help="Flex image name.", show_default=False)]
PolicyArg = Annotated[str, typer.Argument(help="Flex restriction policy name.", show_default=False)]
EntitlementArg = Annotated[str, typer.Argument(help="Entitlement name.", show_default=False)]
InstanceArg = Annotated[str, typer.Argument(help="Instance id.", show_default=False)]
GroupArg = Annotated[str, typer.Argument(help="Group name.", show_default=False)]
UsersArg = Annotated[list[str], typer.Argument(help="User names.", show_default=False)]


# --- images -------------------------------------------------------------------------------------
def _stream(path: Path, advance: Any) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(UPLOAD_BLOCK):
            advance(0, len(block))
            yield block


@image_app.command("register")
def image_register(
    name: ImageArg,
    path: Annotated[
        Path | None, typer.Argument(help="A disk (qcow2, raw, vmdk) or a VM folder (.vmx or XML).")
    ] = None,
    memory: Annotated[
        int | None, typer.Option(help="Memory in MiB (default: the VM's, else 1024).")
    ] = None,
    cpus: Annotated[int | None, typer.Option(help="CPUs (default: the VM's, else 1).")] = None,
    firmware: Annotated[
        str | None, typer.Option(help="bios or uefi (default: what the VM folder says, else bios).")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Let the server fetch the image from this URL.")
    ] = None,
    sha256: Annotated[
        str | None, typer.Option(help="The SHA-256 the fetched image must have.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a disk image or VM folder as the next version of image NAME."""
    api = Api.from_login()
    if url:
        if path is not None or not sha256:
            raise UsageError("--url needs --sha256 and no PATH")
        doc = api.post(
            f"/flex/images/{name}/url",
            {
                "url": url,
                "sha256": sha256,
                "memory_mib": memory or 1024,
                "cpus": cpus or 1,
                "firmware": firmware or "bios",
            },
        )
    else:
        if path is None:
            raise UsageError("give a PATH, or --url and --sha256")
        vm = read_vm(path)
        params = {
            "name": name,
            "memory_mib": memory or vm.memory_mib or 1024,
            "cpus": cpus or vm.cpus or 1,
            "firmware": firmware or vm.firmware or "bios",
        }
        size = os.stat(vm.disk).st_size
        with byte_progress(f"uploading {vm.disk.name}", total=size) as advance:
            doc = api.call(
                "POST",
                "/flex/images/upload",
                params=params,
                content=_stream(vm.disk, advance),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                timeout=None,
            )
    last = doc["versions"][-1]
    emit(
        doc,
        as_json,
        f"image {doc['name']} version {last['version']}: {human_bytes(last['size'])},"
        f" {human_bytes(last['new_bytes'] or 0)} new in the store",
    )


def _image_line(r: dict[str, Any]) -> str:
    vs = r["versions"]
    last = vs[-1] if vs else None
    desc = f"v{last['version']} {human_bytes(last['size'])} {last['firmware']}" if last else "-"
    return f"{r['id']}  {r['name']:<24} {len(vs)} versions, latest {desc}"


def _image_lines(doc: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{doc['name']} ({doc['id']})",
            *(
                f"  v{v['version']}  {human_bytes(v['size'])}  {v['memory_mib']} MiB"
                f"  {v['cpus']} cpus  {v['firmware']}  {v['pieces']} pieces"
                f"  {str(v['created'])[:19]}"
                for v in doc["versions"]
            ),
        ]
    )


images = ApiCommands(image_app, "/flex/images", ("name", ImageArg))
images.list(_image_line, "List flex images and their versions.")
images.show(_image_lines, "Show an image's versions.")
images.delete(
    "image {} deleted", "Delete an image that no entitlement names (its data goes at the next gc)."
)


# --- policies -------------------------------------------------------------------------------------
def _on_off(value: str | None, what: str) -> bool | None:
    if value is None:
        return None
    if value not in ("on", "off"):
        raise UsageError(f"--{what} is on or off, not {value!r}")
    return value == "on"


def _usb(value: str | None) -> Any:
    if value is None or value in ("none", "all"):
        return value
    classes = [c.strip() for c in value.split(",") if c.strip()]
    bad = [c for c in classes if c not in USB_CLASSES]
    if bad or not classes:
        raise UsageError(
            f"--usb is none, all or classes from {', '.join(USB_CLASSES)}; not {value!r}"
        )
    return classes


def _date(value: str) -> str:
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError as e:
        raise UsageError(f"--expires {value!r} is not a date (YYYY-MM-DD or an ISO time)") from e
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).isoformat()


Clipboard = Annotated[str | None, typer.Option(help="on or off (default off).")]
DragDrop = Annotated[str | None, typer.Option("--drag-drop", help="on or off (default off).")]
Usb = Annotated[str | None, typer.Option(help="none, all or CLASS[,CLASS] (hid, storage, ...).")]
Shared = Annotated[str | None, typer.Option("--shared-folder", help="off, ro or rw.")]
Network = Annotated[str | None, typer.Option(help="none or nat.")]
Message = Annotated[str | None, typer.Option(help="Shown to the user at launch.")]
Tries = Annotated[
    int | None, typer.Option("--max-password-tries", help="Wrong passwords before lockout (3).")
]
Lockout = Annotated[str | None, typer.Option(help="Lockout after too many tries, e.g. 15m.")]
Expires = Annotated[str | None, typer.Option(help="Expiry date, e.g. 2027-06-30.")]
ValidFor = Annotated[
    str | None, typer.Option("--valid-for", help="Expiry after each instance's creation, e.g. 30d.")
]
LeaseOpt = Annotated[
    str | None, typer.Option("--lease", help="Offline lease without check-in, e.g. 7d.")
]


def _limits(
    lease: str | None,
    clipboard: str | None,
    drag_drop: str | None,
    usb: str | None,
    shared_folder: str | None,
    network: str | None,
    message: str | None,
    max_password_tries: int | None,
    lockout: str | None,
) -> dict[str, Any]:
    """The part of a policy's body that ``policy create`` and ``policy update`` share:
    the restrictions given, and the lease if given."""
    r = {
        "clipboard": _on_off(clipboard, "clipboard"),
        "drag_drop": _on_off(drag_drop, "drag-drop"),
        "usb": _usb(usb),
        "shared_folder": shared_folder,
        "network": network,
        "message": message,
        "max_password_tries": max_password_tries,
        "lockout_seconds": parse_duration(lockout) if lockout else None,
    }
    body: dict[str, Any] = {"restrictions": {k: v for k, v in r.items() if v is not None}}
    if lease:
        body["lease_seconds"] = parse_duration(lease)
    return body


#: ``--lease`` and the restriction options, given to a command as ``limits`` (:func:`_limits`).
limit_options = option_group(
    "limits",
    [
        ("lease", LeaseOpt, None),
        ("clipboard", Clipboard, None),
        ("drag_drop", DragDrop, None),
        ("usb", Usb, None),
        ("shared_folder", Shared, None),
        ("network", Network, None),
        ("message", Message, None),
        ("max_password_tries", Tries, None),
        ("lockout", Lockout, None),
    ],
    _limits,
)


def _expiry(expires: str | None, valid_for: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if expires:
        body["expires_at"] = _date(expires)
    if valid_for:
        body["valid_for"] = parse_duration(valid_for)
    return body


def _policy_line(p: dict[str, Any]) -> str:
    r = p["restrictions"]
    exp = p["expires_at"] or (
        f"{p['valid_for'] // 86400}d after download" if p["valid_for"] else "never"
    )
    usb = r["usb"] if isinstance(r["usb"], str) else ",".join(r["usb"])
    return (
        f"{p['name']:<20} lease {p['lease_seconds'] // 3600}h  expires {exp}  clipboard"
        f" {'on' if r['clipboard'] else 'off'}  usb {usb}  network {r['network']}"
        f"  shared {r['shared_folder']}"
    )


@policy_app.command("create")
@limit_options
def policy_create(
    name: PolicyArg,
    expires: Expires = None,
    valid_for: ValidFor = None,
    *,
    limits: dict[str, Any],
    as_json: JsonOpt = False,
) -> None:
    """Create a restriction policy."""
    body = {"name": name, **limits, **_expiry(expires, valid_for)}
    doc = Api.from_login().post("/flex/policies", body)
    emit(doc, as_json, _policy_line(doc))


@policy_app.command("update")
@limit_options
def policy_update(
    name: PolicyArg,
    expires: Expires = None,
    valid_for: ValidFor = None,
    no_expiry: Annotated[bool, typer.Option("--no-expiry", help="Remove the expiry.")] = False,
    *,
    limits: dict[str, Any],
    as_json: JsonOpt = False,
) -> None:
    """Change a policy: every instance using it gets the change at its next check-in."""
    body = {**limits, "no_expiry": no_expiry, **_expiry(expires, valid_for)}
    doc = Api.from_login().put(f"/flex/policies/{name}", body)
    emit(doc, as_json, _policy_line(doc))


policies = ApiCommands(policy_app, "/flex/policies", ("name", PolicyArg))
policies.list(_policy_line, "List restriction policies.")
policies.show(_policy_line, "Show a restriction policy.")
policies.delete("flex policy {} deleted", "Delete a policy no entitlement or instance uses.")


# --- entitlements ---------------------------------------------------------------------------------
def _ent_line(e: dict[str, Any]) -> str:
    who = ", ".join([*e["users"], *(f"@{g}" for g in e["groups"])])
    ver = f":{e['version']}" if e["version"] else ""
    managed = f"  managed ({e['cvd_policy']})" if e["manage"] else ""
    return f"{e['name']:<20} {e['image']}{ver}  policy {e['policy']}  for {who}{managed}"


@app.command("entitle")
def entitle(
    name: Annotated[
        str, typer.Argument(help="A name for the new entitlement.", show_default=False)
    ],
    image: Annotated[str, typer.Option(help="IMAGE[:VERSION] (latest when omitted).")],
    policy: Annotated[str, typer.Option(help="The flex restriction policy.")],
    user: Annotated[list[str] | None, typer.Option("--user", help="A user (repeat).")] = None,
    group: Annotated[list[str] | None, typer.Option("--group", help="A group (repeat).")] = None,
    manage: Annotated[
        bool, typer.Option("--manage", help="Manage the guests with Lamina.")
    ] = False,
    cvd_policy: Annotated[
        str | None, typer.Option("--cvd-policy", help="CVD policy of managed guests.")
    ] = None,
    base: Annotated[str | None, typer.Option(help="Base layer for managed guests.")] = None,
    app_: Annotated[list[str] | None, typer.Option("--app", help="App layer (repeat).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Entitle users or groups to an image under a policy."""
    doc = Api.from_login().post(
        "/flex/entitlements",
        {
            "name": name,
            "image": image,
            "policy": policy,
            "users": user or [],
            "groups": group or [],
            "manage": manage,
            "cvd_policy": cvd_policy,
            "base": base,
            "apps": app_ or [],
        },
    )
    emit(doc, as_json, _ent_line(doc))


entitlements = ApiCommands(entitlement_app, "/flex/entitlements", ("name", EntitlementArg))
entitlements.list(_ent_line, "List entitlements.")
entitlements.show(_ent_line, "Show an entitlement.")


@entitlement_app.command("update")
def entitlement_update(
    name: EntitlementArg,
    image: Annotated[str | None, typer.Option(help="IMAGE[:VERSION].")] = None,
    policy: Annotated[str | None, typer.Option(help="The flex restriction policy.")] = None,
    user: Annotated[
        list[str] | None, typer.Option("--user", help="Users (replace the list).")
    ] = None,
    group: Annotated[
        list[str] | None, typer.Option("--group", help="Groups (replace the list).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change an entitlement's image, policy, users or groups."""
    doc = Api.from_login().put(
        f"/flex/entitlements/{name}",
        {"image": image, "policy": policy, "users": user, "groups": group},
    )
    emit(doc, as_json, _ent_line(doc))


entitlements.delete(
    "entitlement {} deleted", "Delete an entitlement whose instances are all revoked."
)


# --- instances ------------------------------------------------------------------------------------
def _inst_line(r: dict[str, Any]) -> str:
    seen = str(r["last_checkin"] or "-")[:19]
    return (
        f"{r['id']}  {r['user']:<14} {r['entitlement']:<16} {r['image']}:{r['version']}"
        f"  {r['policy']:<12} {r['state']:<8} {r['client']}  {seen}"
    )


instances = ApiCommands(instance_app, "/flex/instances", ("instance", InstanceArg))
instances.list(
    _inst_line, "List instances: user, entitlement, image, policy, state, last check-in, client."
)
instances.show(_inst_line, "Show an instance.")


#: ``--message`` of ``lock`` and ``revoke``: what the user is shown.
MESSAGE: GroupOption = ("message", Annotated[str, typer.Option(help="Shown to the user.")], "")
instances.post(
    "lock", _inst_line, "Lock an instance: it refuses to start after its next check-in.", MESSAGE
)
instances.post("unlock", _inst_line, "Unlock a locked instance.")
instances.post(
    "revoke",
    _inst_line,
    "Revoke an instance: at its next check-in the laptop deletes its key and disk.",
    MESSAGE,
)


@instance_app.command("set-policy")
def instance_set_policy(
    instance: InstanceArg,
    policy: Annotated[str | None, typer.Argument(help="The policy (omit with --clear).")] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Back to the entitlement's policy.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Give one instance its own policy (overrides the entitlement's)."""
    if (policy is None) == (not clear):
        raise UsageError("give a POLICY or --clear")
    doc = Api.from_login().put(f"/flex/instances/{instance}/policy", {"policy": policy})
    emit(doc, as_json, _inst_line(doc))


# --- groups ----------------------------------------------------------------------------------------
def _group_line(g: dict[str, Any]) -> str:
    return f"{g['name']:<20} {', '.join(g['members']) or '-'}"


@group_app.command("create")
def group_create(
    name: GroupArg,
    member: Annotated[list[str] | None, typer.Option("--member", help="A user (repeat).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a group of users."""
    doc = Api.from_login().post("/groups", {"name": name, "members": member or []})
    emit(doc, as_json, _group_line(doc))


groups = ApiCommands(group_app, "/groups", ("name", GroupArg))
groups.list(_group_line, "List groups and their members.")
groups.show(_group_line, "Show a group.")


@group_app.command("add")
def group_add(name: GroupArg, users: UsersArg, as_json: JsonOpt = False) -> None:
    """Add users to a group."""
    doc = Api.from_login().post(f"/groups/{name}/members", {"members": users})
    emit(doc, as_json, _group_line(doc))


@group_app.command("remove")
def group_remove(name: GroupArg, users: UsersArg, as_json: JsonOpt = False) -> None:
    """Remove users from a group."""
    doc = Api.from_login().post(f"/groups/{name}/members/remove", {"members": users})
    emit(doc, as_json, _group_line(doc))


groups.delete("group {} deleted", "Delete a group (its entitlements stop reaching its members).")
