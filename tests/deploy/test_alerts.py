"""The chart's alert rules: promtool accepts them, every alert fires when it should and stays silent
otherwise (tests/deploy/alerts_test.yaml), every alert pages or tickets and has its runbook, and the
generated files are those the code generates."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from zapflow.monitoring.__main__ import main, stale_files, write
from zapflow.monitoring.alerts import RUNBOOK_BASE_URL, runbook_name
from zapflow.monitoring.generate import RULES_FILE

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / RULES_FILE
UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")
RUNBOOKS = ROOT / "docs" / "runbooks"
LABEL = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}")


def promtool(*arguments: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: apt-get install prometheus (scripts/bootstrap --dev does)"
    return subprocess.run([binary, *arguments], capture_output=True, text=True, timeout=120, check=False)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def alert_names() -> set[str]:
    return {rule["alert"] for rule in alert_rules()}


def expected_annotations(alertname: str, labels: dict[str, str]) -> dict[str, str]:
    """The annotations Prometheus gives an alert with these labels: its rule's, with `$labels` filled in.

    Prometheus fills them from the expression's labels, before the rule adds its own: a template naming a
    rule label finds no value there, and fails here.
    """
    labels = {name: str(value) for name, value in labels.items()}
    rules = [rule for rule in alert_rules() if rule["alert"] == alertname and rule["labels"].items() <= labels.items()]
    assert len(rules) == 1, f"{alertname} {labels}: {len(rules)} rules match"
    series_labels = {name: value for name, value in labels.items() if name not in rules[0]["labels"]}
    annotations: dict[str, str] = rules[0]["annotations"]
    expanded = {
        name: LABEL.sub(lambda match: series_labels[match.group(1)], text) for name, text in annotations.items()
    }
    assert not any("{{" in text for text in expanded.values()), f"{alertname}: a template the test cannot expand"
    return expanded


def unit_tests() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(UNIT_TESTS.read_text())
    return loaded


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_fires_when_it_should_and_stays_silent_otherwise(tmp_path: Path) -> None:
    suite = unit_tests()
    suite["rule_files"] = [str(RULES)]
    for case in suite["tests"]:
        for check in case["alert_rule_test"]:
            for alert in check["exp_alerts"]:
                alert["exp_annotations"] = expected_annotations(check["alertname"], alert["exp_labels"])
    annotated = tmp_path / "alerts_test.yaml"
    annotated.write_text(yaml.safe_dump(suite, sort_keys=False))
    result = promtool("test", "rules", str(annotated))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    firing: dict[str, int] = defaultdict(int)
    silent: dict[str, int] = defaultdict(int)
    for case in unit_tests()["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else silent)[check["alertname"]] += 1
    assert set(firing) == alert_names()
    assert set(silent) == alert_names()


def test_every_alert_pages_or_tickets_and_says_what_happened() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE_URL}/{runbook_name(rule['alert'])}"


@pytest.mark.parametrize(
    ("slo", "windows"),
    [
        ("turn_latency", {("1h", "5m", "14.4", "page"), ("6h", "30m", "6.0", "page"), ("3d", "6h", "1.0", "ticket")}),
        (
            "webhook_availability",
            {("1h", "5m", "14.4", "page"), ("6h", "30m", "6.0", "page"), ("3d", "6h", "1.0", "ticket")},
        ),
    ],
)
def test_slo_alerts_burn_on_two_windows(slo: str, windows: set[tuple[str, str, str, str]]) -> None:
    found = set()
    for rule in alert_rules():
        labels = rule["labels"]
        if labels.get("slo") != slo:
            continue
        long, short = labels["long_window"], labels["short_window"]
        factor = re.search(rf"ratio_rate{long} > \(([\d.]+) \*", rule["expr"])
        assert factor, rule["expr"]
        assert f"ratio_rate{short} > ({factor.group(1)} *" in rule["expr"]
        found.add((long, short, factor.group(1), labels["severity"]))
    assert found == windows


def test_every_alert_has_a_runbook_listed_in_the_index() -> None:
    index = (RUNBOOKS / "README.md").read_text()
    for name in alert_names():
        runbook = RUNBOOKS / runbook_name(name)
        assert runbook.is_file(), f"no runbook {runbook}"
        text = runbook.read_text()
        assert text.startswith(f"# {name}\n"), runbook
        for section in ("## What it means", "## What to look at", "## What to do"):
            assert section in text, f"{runbook}: no {section!r}"
        assert f"]({runbook.name})" in index, f"{runbook.name} is not in docs/runbooks/README.md"


def test_every_runbook_belongs_to_an_alert() -> None:
    runbooks = {path.name for path in RUNBOOKS.glob("*.md")} - {"README.md"}
    assert runbooks == {runbook_name(name) for name in alert_names()}


def test_the_generated_files_are_current() -> None:
    assert stale_files(ROOT) == [], "run: uv run python -m zapflow.monitoring --write"


def test_check_names_the_stale_files_and_write_refreshes_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"alerts\.yaml"):
        main(["--check"])
    write(tmp_path)
    main(["--check"])
    (tmp_path / RULES_FILE).write_text("groups: []\n")
    assert stale_files(tmp_path) == [RULES_FILE]
