"""The chart's values are documented: every value in README.md, every schema field with a description."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from tests.deploy.chart import CHART_DIR, ROOT

README = (CHART_DIR / "README.md").read_text()
SCHEMA: dict[str, Any] = json.loads((CHART_DIR / "values.schema.json").read_text())
VALUES: dict[str, Any] = yaml.safe_load((CHART_DIR / "values.yaml").read_text())


def resolved(node: Mapping[str, Any]) -> Mapping[str, Any]:
    """A schema node with its local $ref followed (its own keywords win)."""
    reference = node.get("$ref")
    if reference is None:
        return node
    target: Any = SCHEMA
    for part in reference.removeprefix("#/").split("/"):
        target = target[part]
    merged = {**resolved(target), **{key: value for key, value in node.items() if key != "$ref"}}
    merged["properties"] = {**resolved(target).get("properties", {}), **node.get("properties", {})}
    return merged


def leaves(values: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """The dotted path of every value a user sets as a whole: a scalar, a list, or a free-form object."""
    properties = resolved(schema).get("properties", {})
    for key, value in values.items():
        path = f"{prefix}{key}"
        assert key in properties, f"{path} is in values.yaml but not in values.schema.json"
        child = resolved(properties[key])
        if isinstance(value, dict) and child.get("properties"):
            yield from leaves(value, child, f"{path}.")
        else:
            yield path


def schema_fields(node: Any, path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every property of the schema, in $defs too, with where it is."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in ("properties", "$defs") and isinstance(value, Mapping):
                for name, child in value.items():
                    yield f"{path}/{key}/{name}", child
            yield from schema_fields(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from schema_fields(item, f"{path}/{index}")


def test_every_value_is_documented_in_the_readme() -> None:
    paths = list(leaves(VALUES, SCHEMA))
    assert len(paths) > 150, "the walk reaches the workloads' values"
    missing = [path for path in paths if f"`{path}`" not in README]
    assert missing == []


def test_the_readme_documents_no_value_that_does_not_exist() -> None:
    values_section = README.split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    documented = {line.split("`")[1] for line in values_section.splitlines() if line.startswith("| `")}
    assert documented - set(leaves(VALUES, SCHEMA)) == set()


def test_every_schema_field_has_a_description() -> None:
    undescribed = [path for path, field in schema_fields(SCHEMA) if not str(field.get("description", "")).strip()]
    assert undescribed == []


def test_the_schema_refuses_keys_it_does_not_know() -> None:
    # Closed wherever the chart reads the keys itself; Kubernetes objects passed through stay open.
    assert SCHEMA["additionalProperties"] is False
    for path, field in schema_fields(SCHEMA):
        if field.get("properties") and path != "/$defs/workload":
            closed = field.get("additionalProperties") is False or field.get("unevaluatedProperties") is False
            assert closed, path


def test_the_deployment_guide_points_at_the_chart() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text()
    section = guide.split("## Helm chart", 1)[1].split("\n## ", 1)[0]
    assert "charts/zapflow/README.md" in section
