"""OpenAPI description of the ingest body. The route parses the raw body itself (validation is
the wire contract's job), so the schema comes from the catalog rather than from a model."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from events.catalog import CATALOG
from events.schemas import envelope_schema

_REF = "#/components/schemas/"

_EXAMPLE = {
    "event_id": "3f1c9a52-8d7e-4b6a-9c1d-2e5f7a8b9c0d",
    "type": "purchase.made",
    "schema_version": 1,
    "customer_id": "C-0042",
    "occurred_at": "2026-01-05T10:15:30.250+02:00",
    "source": "sales",
    "payload": {
        "order_id": "O-1001",
        "items": [{"sku": "CARD-50", "quantity": 2, "unit_price": "14.95"}],
        "total": "29.90",
        "currency": "EUR",
    },
}

INGEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "One touchpoint envelope, or a list of 1 to 1000. `event_id` may be omitted: the API "
            "then generates one and returns it. Money is a decimal string, never a number."
        ),
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": f"{_REF}Touchpoint"},
                        {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 1000,
                            "items": {"$ref": f"{_REF}Touchpoint"},
                        },
                    ]
                },
                "examples": {
                    "one event": {"value": _EXAMPLE},
                    "a list, event_id generated": {
                        "value": [{k: v for k, v in _EXAMPLE.items() if k != "event_id"}]
                    },
                },
            }
        },
    }
}
"""`openapi_extra` of POST /events."""


def touchpoint_schemas() -> dict[str, Any]:
    """Component schemas: one per catalog type and version, and `Touchpoint`, any of them."""
    schemas: dict[str, Any] = {}
    for schema in CATALOG.schemas():
        published = envelope_schema(schema)
        component = {k: v for k, v in published.items() if k not in ("$schema", "$id")}
        component["required"] = [name for name in published["required"] if name != "event_id"]
        schemas[f"{schema.type}.v{schema.version}"] = component
    schemas["Touchpoint"] = {
        "description": "A touchpoint envelope; `type` and `schema_version` select the payload.",
        "oneOf": [{"$ref": f"{_REF}{name}"} for name in schemas],
    }
    return schemas


def add_touchpoint_schemas(app: FastAPI) -> None:
    """Add the touchpoint component schemas to the app's generated OpenAPI document."""
    generate = app.openapi
    extra = touchpoint_schemas()

    def openapi() -> dict[str, Any]:
        document = generate()
        document.setdefault("components", {}).setdefault("schemas", {}).update(extra)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
