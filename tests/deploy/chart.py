"""Render charts/zapflow with the real Helm engine (helm_python), as `helm template -f ... --set ...` would.

Shared by the chart's tests: `render(values_files, set_values)` gives the rendered objects of one
release, each a dict. Renders are cached per arguments for the session (each caller gets its own
copy), so the scenarios in ci/ are rendered once however many test modules read them.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import helm_python
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "zapflow"
# The value scenarios a release is tested with (chart-testing's convention: ci/*-values.yaml).
SCENARIOS = tuple(sorted((CHART_DIR / "ci").glob("*-values.yaml")))
RELEASE = "zf"
NAMESPACE = "zapflow"

Object = dict[str, Any]

# Custom resources of the CRDs the chart ships (crds/), which Kubernetes' own schemas do not know:
# tests/deploy/test_operator_chart.py validates them against those CRDs.
CHART_CRD_API_VERSIONS = ("kopf.dev/v1",)


@functools.cache
def chart() -> helm_python.Chart:
    """The chart, loaded once (a loaded chart is immutable)."""
    return helm_python.Chart.load(CHART_DIR)


def merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Values files layered as Helm layers `-f` files: maps merge key by key, anything else is replaced."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def user_values(values_files: Iterable[Path | str] = (), set_values: Iterable[str] = ()) -> dict[str, Any]:
    """The values a user gives: the files in order, then each `--set` expression."""
    values: dict[str, Any] = {}
    for path in values_files:
        values = merged(values, yaml.safe_load(Path(path).read_text()) or {})
    for expression in set_values:
        values = merged(values, helm_python.parse_set_string(expression))
    return values


def render(values_files: Sequence[Path | str] = (), set_values: Sequence[str] = ()) -> list[Object]:
    """The objects a release with these values would create, hooks included (NOTES.txt excluded).

    Raises helm_python.HelmError when the values break the schema or a template fails.
    """
    return copy.deepcopy(_render(tuple(str(path) for path in values_files), tuple(set_values)))


def render_values(values: Mapping[str, Any]) -> list[Object]:
    """The objects rendered from values given as a dict (not cached)."""
    return _objects(chart().render(dict(values), name=RELEASE, namespace=NAMESPACE, is_install=True))


@functools.cache
def _render(values_files: tuple[str, ...], set_values: tuple[str, ...]) -> list[Object]:
    return render_values(user_values(values_files, set_values))


def _objects(manifests: Mapping[str, str]) -> list[Object]:
    return [
        document
        for template, text in sorted(manifests.items())
        if template.endswith((".yaml", ".yml"))
        for document in yaml.safe_load_all(text)
        if document
    ]


def of_kind(objects: Iterable[Object], kind: str) -> list[Object]:
    return [item for item in objects if item["kind"] == kind]


def component(item: Object) -> str | None:
    """The app.kubernetes.io/component label of an object (None: the release as a whole)."""
    labels: dict[str, str] = item["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/component")


def by_component(objects: Iterable[Object], kind: str) -> dict[str, Object]:
    """The objects of one kind keyed by component (one per component)."""
    found: dict[str, Object] = {}
    for item in of_kind(objects, kind):
        name = component(item)
        assert name is not None, f"{kind} {item['metadata']['name']} has no component label"
        assert name not in found, f"two {kind}s for {name}"
        found[name] = item
    return found
