"""The docs say what the code does: generated pages are current, and every test and path they name exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from zapflow import configdoc
from zapflow.platform.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
STALE = f"stale: run `{configdoc.REGENERATE}` from the repository root"
# The pages whose references are checked: the front door, docs/ and every package's README.
PAGES = sorted([ROOT / "README.md", *DOCS.glob("*.md"), *(ROOT / "services").rglob("README.md")])
TEST_REFERENCE = re.compile(r"(tests/[\w/]+\.py)::(\w+)")
# A path in code style from the repository root; placeholders (`<service>`) are not paths.
ROOTED_PATH = re.compile(r"`((?:services|tests|bench|docs|scripts|proto|schemas)/[^`<>\s:]*)")
RELATIVE_LINK = re.compile(r"\]\((?!https?:|mailto:)([^)#\s]*)(?:#([^)\s]+))?\)")


def test_the_configuration_page_is_current() -> None:
    assert (DOCS / configdoc.CONFIGURATION_PAGE).read_text() == configdoc.configuration_page(), STALE


def test_the_bus_tables_are_current() -> None:
    page = (DOCS / configdoc.BUS_PAGE).read_text()
    assert configdoc.generated_tables(page) == configdoc.catalogue_tables(), STALE


def test_every_setting_has_a_description() -> None:
    undescribed = [
        f"{cls.__module__}.{cls.__name__}.{name}"
        for _, cls in configdoc.settings_classes()
        for name, field in configdoc.documented_fields(cls).items()
        if not field.description
    ]
    assert undescribed == [], "give each field a docstring (the line under it)"


def test_every_service_settings_class_is_found() -> None:
    found = {cls.__name__ for _, cls in configdoc.settings_classes()}
    assert {
        "CoreSettings",
        "GatewaySettings",
        "ConversationSettings",
        "RecorderSettings",
        "SchedulerSettings",
        "SandboxSettings",
    } <= found
    assert "ServiceSettings" not in found, "a base class without a prefix is not read on its own"


def test_a_new_setting_appears_with_its_variable_type_default_and_description() -> None:
    class ExampleSettings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="ZAPFLOW_EXAMPLE_")

        retries: int = Field(default=3, ge=1)
        """How often to try again."""

    section = configdoc.settings_section("example", ExampleSettings)

    assert "| `ZAPFLOW_EXAMPLE_RETRIES` | integer, ≥ 1 | `3` | How often to try again. |" in section
    assert "`ZAPFLOW_EXAMPLE_PORT`" in section, "inherited fields are the service's too"
    assert "ZAPFLOW_EXAMPLE_CORE" not in section, "the shared settings have their own section"


def test_every_test_the_docs_name_exists() -> None:
    named = {(page.name, path, name) for page in PAGES for path, name in TEST_REFERENCE.findall(page.read_text())}
    assert any(page == "architecture.md" for page, _, _ in named), "architecture.md names no test"
    missing = [f"{page}: {path}::{name}" for page, path, name in sorted(named) if name not in _tests_in(ROOT / path)]
    assert missing == [], "\n".join(missing)


def test_every_path_the_docs_name_exists() -> None:
    missing = [f"{page.relative_to(ROOT)}: {target}" for page in PAGES for target in _missing_paths(page)]
    assert missing == [], "\n".join(missing)


def test_a_wrong_reference_is_found(tmp_path: Path) -> None:
    (tmp_path / "README.md").touch()
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs/page.md"
    page.write_text(
        "# The `page`, at last\n"
        "See `services/zapflow/nowhere.py`, [the plan](plan.md), [the top](../README.md#top),\n"
        "[here](#the-page-at-last) and [there](#elsewhere).\n"
    )

    assert _missing_paths(page) == ["services/zapflow/nowhere.py", "plan.md", "../README.md#top", "#elsewhere"]
    assert "test_no_such_test" not in _tests_in(Path(__file__))
    assert "test_a_wrong_reference_is_found" in _tests_in(Path(__file__))


def _tests_in(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def _missing_paths(page: Path) -> list[str]:
    text = page.read_text()
    rooted = [target for target in ROOTED_PATH.findall(text) if not _exists(ROOT, target)]
    relative = [
        f"{target}#{anchor}" if anchor else target
        for target, anchor in RELATIVE_LINK.findall(text)
        if not _link_resolves(page, target, anchor)
    ]
    return rooted + relative


def _link_resolves(page: Path, target: str, anchor: str) -> bool:
    linked = page.parent / target if target else page
    return linked.exists() and (not anchor or anchor in _anchors(linked))


def _anchors(page: Path) -> set[str]:
    """The fragments a Markdown page's headings get (GitHub's rule: lowercase, punctuation out, - for spaces)."""
    headings = (line.lstrip("#").strip() for line in page.read_text().splitlines() if line.startswith("#"))
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def _exists(base: Path, target: str) -> bool:
    return any(base.glob(target)) if "*" in target else (base / target).exists()
