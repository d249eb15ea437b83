"""The commands that make one call to the server's API and print its answer.

Most admin commands are this and nothing more: ``lamina flex image list`` gets
``/flex/images`` and prints a line a row; ``lamina device reject HOST`` posts
``/devices/HOST/reject`` and prints what became of the device. An :class:`ApiCommands`
adds them to a command group by one call each, which names the command and gives its
help (what a docstring says in ``--help``) and how to print the answer. Every one takes
``--json``, the answer as the API gave it, but the ``delete`` commands that get no answer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import typer

from lamina.cli.client import Api
from lamina.cli.common import GroupOption, JsonOpt, emit, emit_rows

#: How a command prints the API's answer (a row of a list, or the one thing it shows).
Text = Callable[[Any], str]

_AS_JSON = inspect.Parameter(
    "as_json", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=False, annotation=JsonOpt
)


class ApiCommands:
    """The commands of group ``group`` on the things the API keeps at ``path``: ``list``
    gets ``path``; the others take the argument ``arg`` (its parameter name and its
    ``Annotated`` Typer type, as a parameter ``name: ImageArg`` declares it) and call
    ``path/ARG`` (and below it).

    Commands are added in the order of the calls, which is their order in ``--help``.
    """

    def __init__(self, group: typer.Typer, path: str, arg: tuple[str, Any]) -> None:
        self.group = group
        self.path = path
        self.param = inspect.Parameter(
            arg[0], inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=arg[1]
        )

    def list(self, line: Text, help: str) -> None:
        """``list``: get ``path`` and print ``line`` of each row."""

        def run(as_json: bool) -> None:
            emit_rows(Api.from_login().get(self.path), as_json, line)

        self._add("list", help, [_AS_JSON], run)

    def show(self, text: Text, help: str) -> None:
        """``show ARG``: get ``path/ARG`` and print ``text`` of it."""
        self.call("show", "GET", "", text, help)

    def post(self, name: str, text: Text, help: str, *options: GroupOption) -> None:
        """``NAME ARG [OPTIONS]``: post ``path/ARG/NAME`` (an action named as the command)
        with the ``options`` (their parameter name, ``Annotated`` type and default) as the
        JSON body, and print ``text`` of what the API answers (the thing as it is now)."""
        params = [
            inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d, annotation=a)
            for n, a, d in options
        ]

        def run(as_json: bool, **values: Any) -> None:
            one = self._one(values)
            doc = Api.from_login().post(f"{one}/{name}", {n: values[n] for n, _, _ in options})
            emit(doc, as_json, text(doc))

        self._add(name, help, [self.param, *params, _AS_JSON], run)

    def call(self, name: str, method: str, below: str, text: Text, help: str) -> None:
        """``NAME ARG``: call ``method`` on ``path/ARG`` + ``below`` and print ``text`` of
        the answer."""

        def run(as_json: bool, **arg: Any) -> None:
            doc = Api.from_login().call(method, self._one(arg) + below)
            emit(doc, as_json, text(doc))

        self._add(name, help, [self.param, _AS_JSON], run)

    def delete(self, said: str, help: str) -> None:
        """``delete ARG``: delete ``path/ARG`` and print ``said`` (``{}`` is ARG); the API
        answers nothing, so there is no ``--json``."""

        def run(**arg: Any) -> None:
            Api.from_login().delete(self._one(arg))
            typer.echo(said.format(*arg.values()))

        self._add("delete", help, [self.param], run)

    def _one(self, arg: dict[str, Any]) -> str:
        """``path/ARG``: the one thing the command's argument names."""
        return f"{self.path}/{arg[self.param.name]}"

    def _add(
        self, name: str, help: str, params: Sequence[inspect.Parameter], run: Callable[..., None]
    ) -> None:
        """Add command ``name``: Typer reads its arguments and options from ``params`` (as
        from a function's signature) and calls ``run`` with their values."""

        def command(**values: Any) -> None:
            run(**values)

        command.__name__ = command.__qualname__ = name.replace("-", "_")
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
        self.group.command(name, help=help)(command)
