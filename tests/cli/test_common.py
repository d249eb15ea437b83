"""cli/common: the option groups (``option_group``) and the show/list printers, in process."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.testing import CliRunner

from lamina.cli.common import JsonOpt, emit, emit_rows, option_group
from lamina.cli.fleet import settings_options
from lamina.cli.store_options import store_command
from lamina.db.location import StoreLocation

A = Annotated[str | None, typer.Option(help="First of the group.")]
B = Annotated[int, typer.Option(help="Second of the group.")]

pair = option_group("pair", [("a", A, None), ("b", B, 2)], lambda a, b: (a, b))


def _app() -> tuple[typer.Typer, list[Any]]:
    seen: list[Any] = []
    app = typer.Typer()

    @app.command()
    @pair
    def run(
        name: Annotated[str, typer.Argument(help="A name.")],
        first: Annotated[bool, typer.Option("--first", help="Before the group.")] = False,
        *,
        pair: tuple[str | None, int],
        as_json: JsonOpt = False,
    ) -> None:
        """Record what the command was given."""
        seen.append((name, pair, as_json))

    return app, seen


def test_a_group_stands_at_its_parameters_place_and_reaches_the_command_built() -> None:
    app, seen = _app()
    r = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert r.exit_code == 0
    order = [w for w in r.output.split() if w in ("--first", "--a", "--b", "--json")]
    assert order == ["--first", "--a", "--b", "--json"]
    assert CliRunner().invoke(app, ["x", "--b", "5", "--json"]).exit_code == 0
    assert CliRunner().invoke(app, ["y", "--a", "z"]).exit_code == 0
    assert seen == [("x", (None, 5), True), ("y", ("z", 2), False)]
    bad = CliRunner().invoke(app, ["x", "--b", "many"])
    assert bad.exit_code == 2 and seen[-1][0] == "y"


def test_the_store_options_give_the_command_their_location(tmp_path: Any) -> None:
    got: list[StoreLocation] = []
    app = typer.Typer()

    @app.command()
    @store_command
    def look(loc: StoreLocation) -> None:
        """Record the location."""
        got.append(loc)

    r = CliRunner().invoke(app, ["--data", str(tmp_path), "--db", "sqlite:///x.db"], env={})
    assert r.exit_code == 0, r.output
    assert got[0].data == tmp_path and got[0].db_url == "sqlite:///x.db"
    assert got[0].store_url is None and got[0].keyfile is None


def test_policy_settings_keep_only_what_was_given_and_parse_it() -> None:
    got: list[dict[str, Any]] = []
    app = typer.Typer()

    @app.command()
    @settings_options
    def set_(settings: dict[str, Any]) -> None:
        """Record the settings."""
        got.append(settings)

    args = ["--interval", "2h", "--keep-last", "3", "--bandwidth", "10M", "--class", "system"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert got == [
        {"interval": 7200, "keep_last": 3, "classes": ["system"], "bandwidth_limit": 10 << 20}
    ]


def test_emit_prints_the_line_or_the_document(capsys: Any) -> None:
    emit({"id": 1}, False, "one line")
    emit_rows([{"n": 1}, {"n": 2}], False, lambda r: f"row {r['n']}")
    assert capsys.readouterr().out == "one line\nrow 1\nrow 2\n"
    emit({"id": 1}, True, "not printed")
    emit_rows([{"n": 1}], True, lambda r: "not printed")
    assert capsys.readouterr().out == '{\n  "id": 1\n}\n[\n  {\n    "n": 1\n  }\n]\n'
