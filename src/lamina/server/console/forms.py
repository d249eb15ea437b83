"""The form fields the console's views share, each a type that carries its limits.

A view's signature then says what its form sends (``name: Name``) and the limits are
written once: a name is 1 to 128 characters, as the API's models have it; a list typed
one a line is read with ``lines``. A field particular to one form keeps its own
``Annotated[..., Form(...)]``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Form

#: The name of something created (a policy, a collection, a user, a group, a flex image…).
Name = Annotated[str, Form(min_length=1, max_length=128)]
#: A password as the API takes it.
Password = Annotated[str, Form(min_length=1, max_length=1024)]
#: A value the form must send: the CVD, collection, snapshot or policy chosen.
Chosen = Annotated[str, Form(min_length=1)]
#: A checkbox: sent (as "on") when ticked, absent otherwise; read with ``bool()``.
Check = Annotated[str, Form()]
#: A text field that may be left empty (a layer's name or the version it updates).
Text = Annotated[str, Form()]
#: Notes kept with a layer, a driver pack or a profile.
Notes = Annotated[str, Form(max_length=4000)]
#: Names typed one a line, or separated by commas (users, groups, members): see ``lines``.
Names = Annotated[str, Form(max_length=100_000)]
#: The message a flex instance's user is shown (or a flex policy's).
Message = Annotated[str, Form(max_length=4096)]
#: A snapshot: its id, a prefix of it, or ``latest``.
Snapshot = Annotated[str, Form(max_length=64)]
#: A device, base layer, CVD name or snapshot typed or chosen in a whole-system
#: operation's form (migrate, restore system, provision).
Ref = Annotated[str, Form(max_length=255)]


def lines(text: str) -> list[str]:
    """A textarea's non-empty lines (commas also separate), stripped."""
    return [x.strip() for x in text.replace(",", "\n").splitlines() if x.strip()]
