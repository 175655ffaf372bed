"""The BotTenant CRD: current with the model, a valid Kubernetes object, a structural schema, and a schema that
accepts the documented tenants and names the field of a broken one."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from zapflow.operator import crd
from zapflow.tenants.files import parse_tenant

ROOT = Path(__file__).resolve().parents[2]
DEMO_TENANTS = ROOT / "services" / "zapflow" / "dev" / "demo-tenant.yaml"
SCHEMA = crd.custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.27.0", latest_version())
# Keywords a node of a structural schema may carry (apiextensions.k8s.io/v1 JSONSchemaProps, as used here).
STRUCTURAL_KEYWORDS = {
    "type",
    "description",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "enum",
    "pattern",
    "format",
    "nullable",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


def _nullable_type(validator: Any, types: Any, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    if instance is None and schema.get("nullable"):
        return
    yield from jsonschema.Draft4Validator.VALIDATORS["type"](validator, types, instance, schema)


# OpenAPI 3.0 as the API server reads it: draft 4 (boolean exclusiveMinimum) plus `nullable`.
OpenApiValidator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"type": _nullable_type})


def errors_of(document: dict[str, Any]) -> list[str]:
    """Where the CRD's schema refuses a BotTenant, as dotted paths."""
    return sorted(
        ".".join(str(part) for part in error.absolute_path) for error in OpenApiValidator(SCHEMA).iter_errors(document)
    )


def demo_tenants() -> list[dict[str, Any]]:
    text = DEMO_TENANTS.read_text().format(sandbox_url="http://sandbox:8080")
    return [document for document in yaml.safe_load_all(text) if document]


def readme_tenants() -> list[dict[str, Any]]:
    """The complete BotTenant documents in yaml blocks of the tenants README and docs/operator.md."""
    found = []
    for page in (ROOT / "services" / "zapflow" / "tenants" / "README.md", ROOT / "docs" / "operator.md"):
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), flags=re.DOTALL):
            found += [
                doc for doc in yaml.safe_load_all(block) if isinstance(doc, dict) and doc.get("kind") == "BotTenant"
            ]
    return found


def test_the_committed_crd_is_current_and_a_stale_one_is_caught(tmp_path: Path) -> None:
    assert crd.main(["--check", "--root", str(ROOT)]) == 0, "run: uv run python -m zapflow.operator.crd --write"
    stale = tmp_path / crd.CRD_FILE
    stale.parent.mkdir(parents=True)
    stale.write_text((ROOT / crd.CRD_FILE).read_text().replace("minReplicas", "minimumReplicas"))
    assert crd.main(["--check", "--root", str(tmp_path)]) == 1
    assert crd.main(["--write", "--root", str(tmp_path)]) == 0
    assert crd.main(["--check", "--root", str(tmp_path)]) == 0


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_crd_is_a_valid_kubernetes_object(version: str) -> None:
    document = yaml.safe_load((ROOT / crd.CRD_FILE).read_text())
    kubernetes_validate.validate(document, version, strict=True)
    names = document["spec"]["names"]
    assert (names["plural"], names["kind"], names["shortNames"]) == ("bottenants", "BotTenant", ["bt"])
    (served,) = document["spec"]["versions"]
    assert served["subresources"] == {"status": {}}
    assert [column["name"] for column in served["additionalPrinterColumns"]] == [
        "Phone Number Id",
        "Responder",
        "Ready",
        "Age",
    ]


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below the root: properties, items and additionalProperties."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


def test_the_schema_is_structural() -> None:
    # What the API server refuses in apiextensions/v1, checked here because nothing offline runs its validation.
    for path, node in nodes(SCHEMA):
        assert set(node) <= STRUCTURAL_KEYWORDS, (path, set(node) - STRUCTURAL_KEYWORDS)
        typed = (
            "type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        )
        assert typed, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert not isinstance(node.get("additionalProperties"), bool), path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, path
    status = SCHEMA["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    condition = status["properties"]["conditions"]["items"]["properties"]
    assert {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"} == set(condition)
    assert {"observedGeneration", "knowledgeChunks", "agents", "lastTurnAt"} <= set(status["properties"])


def test_the_spec_schema_keeps_every_description_and_the_models_limits() -> None:
    spec = SCHEMA["properties"]["spec"]
    undescribed = [path for path, node in nodes(spec, "spec") if path != "spec" and not node.get("description")]
    undescribed = [path for path in undescribed if not path.endswith(("[]", "{}"))]
    assert undescribed == []
    whatsapp = spec["properties"]["whatsapp"]
    assert set(whatsapp["required"]) == {"phoneNumberId", "appSecret", "accessToken", "verifyToken"}
    assert spec["properties"]["rateLimits"]["properties"]["messagesPerSecond"]["exclusiveMinimum"] is True
    assert spec["properties"]["bot"]["properties"]["openai"]["nullable"] is True


def test_the_documented_tenants_are_accepted_by_the_crd_and_the_model() -> None:
    documents = demo_tenants() + readme_tenants()
    assert len(documents) >= 3, "the demo tenants and the documented examples"
    for document in documents:
        assert errors_of(document) == [], document["metadata"]["name"]
        parse_tenant(document, document["metadata"]["name"])


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["spec", "whatsapp", "phoneNumberId"], "not-a-number", "spec.whatsapp.phoneNumberId"),
        (["spec", "bot", "responder"], "gpt", "spec.bot.responder"),
        (["spec", "rateLimits", "messagesPerSecond"], 0, "spec.rateLimits.messagesPerSecond"),
        (["spec", "bot", "rules"], {"name": "prices"}, "spec.bot.rules"),
        (["spec", "messaging", "messagingLimit"], 300, "spec.messaging.messagingLimit"),
        (["spec", "scaling", "maxReplicas"], 0, "spec.scaling.maxReplicas"),
        (["metadata", "name"], "Acme_Corp", "metadata.name"),
    ],
    ids=lambda value: value if isinstance(value, str) and value.startswith(("spec.", "metadata.")) else "",
)
def test_a_broken_tenant_is_refused_with_the_field_named(path: list[str], value: Any, field: str) -> None:
    document = copy.deepcopy(demo_tenants()[0])
    parent = document
    for key in path[:-1]:
        parent = parent.setdefault(key, {})
    parent[path[-1]] = value
    assert errors_of(document) == [field]


def test_a_tenant_without_its_number_is_refused_at_the_whatsapp_section() -> None:
    document = copy.deepcopy(demo_tenants()[0])
    del document["spec"]["whatsapp"]["phoneNumberId"]
    assert errors_of(document) == ["spec.whatsapp"]
