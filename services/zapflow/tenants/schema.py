"""The structural OpenAPI schema of a BotTenant, the one the CRD embeds.

It is derived from the pydantic models and checked in at schemas/bottenant.schema.json (a test
keeps the two equal: `zapflow tenant schema` regenerates it).
"""

from __future__ import annotations

from typing import Any

from zapflow.tenants.model import BotTenant


def _structural(node: Any, definitions: dict[str, Any]) -> Any:
    """Inline $refs and turn Optional[X] into X + nullable: the form a CRD schema requires."""
    if isinstance(node, list):
        return [_structural(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = _structural(definitions[node["$ref"].rsplit("/", 1)[-1]], definitions)
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        if len(options) == 1 and len(node["anyOf"]) == 2:
            merged = {**_structural(options[0], definitions), "nullable": True}
            rest = {k: _structural(v, definitions) for k, v in node.items() if k not in ("anyOf", "default", "title")}
            return {**merged, **rest}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs") or (key == "default" and value is None):
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "properties":
            out[key] = {name: _structural(child, definitions) for name, child in value.items()}
        else:
            out[key] = value if key in ("default", "enum", "pattern") else _structural(value, definitions)
    return out


def tenant_json_schema() -> dict[str, Any]:
    raw = BotTenant.model_json_schema(by_alias=True)
    schema: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    schema["description"] = "A zapflow tenant: one business, its WhatsApp number and its bot."
    return schema
