"""JSON Schemas of the wire contract, generated from the catalog (published in events/schemas/)."""

from __future__ import annotations

from pathlib import Path

import orjson

from events.catalog import CATALOG, Catalog, EventSchema
from events.envelope import CUSTOMER_ID_PATTERN, REQUIRED_FIELDS, UUID_PATTERN
from events.fields import JsonSchema, object_schema

SCHEMA_DIR = Path(__file__).with_name("schemas")
_BASE_URI = "https://crm.example/schemas/"


def envelope_schema(schema: EventSchema) -> JsonSchema:
    """The JSON Schema of one message on crm.touchpoints of this type and version."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{_BASE_URI}{file_name(schema)}",
        "title": f"{schema.type} v{schema.version}",
        "description": schema.description,
        "type": "object",
        "additionalProperties": False,
        "required": list(REQUIRED_FIELDS),
        "properties": {
            "event_id": {"type": "string", "format": "uuid", "pattern": UUID_PATTERN},
            "type": {"const": schema.type},
            "schema_version": {"const": schema.version},
            "customer_id": {"type": "string", "pattern": CUSTOMER_ID_PATTERN},
            "occurred_at": {"type": "string", "format": "date-time"},
            "source": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"\S"},
            "correlation_id": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": 200,
                "pattern": r"\S",
            },
            "payload": object_schema(schema.fields),
        },
    }


def file_name(schema: EventSchema) -> str:
    return f"{schema.type}.v{schema.version}.schema.json"


def render_all(catalog: Catalog = CATALOG) -> dict[str, bytes]:
    """File name -> pretty JSON bytes, for every type and version of the catalog."""
    return {
        file_name(s): orjson.dumps(envelope_schema(s), option=orjson.OPT_INDENT_2) + b"\n"
        for s in catalog.schemas()
    }


def write_all(directory: Path = SCHEMA_DIR, catalog: Catalog = CATALOG) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in render_all(catalog).items():
        path = directory / name
        path.write_bytes(content)
        written.append(path)
    return written
