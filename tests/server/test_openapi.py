"""Every JSON answer of the API has a response model: no free-form object at the edge."""

from __future__ import annotations

from pathlib import Path

from lamina.config import ServerSettings
from lamina.protocol.tasks import PARAMS
from lamina.server.app import create_app

#: Answers that are not JSON models on purpose: a file's bytes, streamed (``application/json``
#: is only FastAPI's default declaration for a route that returns a ``StreamingResponse``).
NOT_JSON = {("get", "/api/v1/cvds/{ref}/snapshots/{snapshot}/file")}


def test_every_json_response_is_a_named_model(tmp_path: Path) -> None:
    app = create_app(ServerSettings(data=tmp_path / "data", admin_password="x" * 16))
    doc = app.openapi()
    loose = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if (method, path) in NOT_JSON:
                continue
            for code, answer in op.get("responses", {}).items():
                schema = answer.get("content", {}).get("application/json", {}).get("schema")
                if not code.startswith("2") or schema is None:
                    continue
                if "$ref" not in schema.get("items", schema):
                    loose.append(f"{method.upper()} {path} {code}")
    assert loose == []
    for name in (
        "LayerPublic",
        "PlanPublic",
        "CollectionPublic",
        "RulesTestPublic",
        "MePublic",
        "DriverProfilePublic",
        "FlexImagePublic",
        "FlexEntitlementPublic",
        "MigrationReport",
        "ProvisionReport",
        "MigrateOsReport",
    ):
        assert name in doc["components"]["schemas"], name


def test_task_parameters_are_one_model_per_kind_in_the_document(tmp_path: Path) -> None:
    """``TaskPublic.params`` is the union of the kinds' models, not a free-form object."""
    app = create_app(ServerSettings(data=tmp_path / "data", admin_password="x" * 16))
    schemas = app.openapi()["components"]["schemas"]
    for model in ("TaskPublic", "WorkItem"):
        params = schemas[model]["properties"]["params"]
        # TaskPublic's may also be null: a stored task whose parameters no longer read.
        union = next((x for x in params.get("anyOf", [params]) if "oneOf" in x), {})
        refs = {x["$ref"].rsplit("/", 1)[1] for x in union.get("oneOf", [])}
        assert refs == {m.__name__ for m in PARAMS.values()}, model
