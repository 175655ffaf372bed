"""The image's Dockerfile and build context, read as Docker reads them (no Docker engine runs here)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
IMAGE_USER = "10001:10001"
DATA_DIR = "/var/lib/zapflow"
COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|build-essential|make|cmake|rustc|cargo)\b")
SECRET_LIKE = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_?KEY|AUTH", re.IGNORECASE)

Instruction = dict[str, Any]


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(str(ROOT / "Dockerfile"))


@pytest.fixture(scope="module")
def stages(dockerfile: DockerfileParser) -> list[list[Instruction]]:
    """Each stage's instructions, FROM first."""
    found: list[list[Instruction]] = []
    for instruction in dockerfile.structure:
        if instruction["instruction"] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def values(stage: list[Instruction], name: str) -> list[str]:
    return [str(instruction["value"]) for instruction in stage if instruction["instruction"] == name]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context: the last pattern matching it or a parent wins."""
    parts = path.split("/")
    left_out = False
    for pattern in patterns:
        kept = pattern.startswith("!")
        expression = _glob(pattern.removeprefix("!"))
        if any(expression.fullmatch("/".join(parts[:depth])) for depth in range(1, len(parts) + 1)):
            left_out = not kept
    return left_out


def _glob(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob: `**` crosses directories, `*` and `?` do not, `[...]` a class."""
    translated = ""
    for token in re.findall(r"\*\*/?|\*|\?|\[[^]]*\]|[^*?[]+", pattern.strip("/")):
        if token.startswith("**"):
            translated += "(?:.*/)?" if token.endswith("/") else ".*"
        elif token == "*":
            translated += "[^/]*"
        elif token == "?":
            translated += "[^/]"
        elif token.startswith("["):
            translated += token
        else:
            translated += re.escape(token)
    return re.compile(translated)


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_a_builder_stage_and_a_final_stage_on_one_exactly_pinned_slim_python(dockerfile: DockerfileParser) -> None:
    assert dockerfile.is_multistage
    builder, final = dockerfile.parent_images
    assert builder == final  # the virtual environment links to the builder's interpreter
    match = re.fullmatch(r"python:(\d+\.\d+)\.\d+-slim-[a-z]+", final)
    assert match, f"{final} is not an exact Python release on a slim base"
    assert f">={match.group(1)}" in pyproject()["project"]["requires-python"]


def test_the_final_stage_runs_as_an_unprivileged_numeric_user(stages: list[list[Instruction]]) -> None:
    final = stages[-1]
    assert values(final, "USER")[-1] == IMAGE_USER
    run = " ".join(values(final, "RUN"))
    assert "--uid 10001" in run and "--gid 10001" in run
    # The one directory the user may write besides /tmp, created for it, is where it starts.
    assert f"--owner=10001 --group=10001 --mode=0750 {DATA_DIR}" in run
    assert values(final, "WORKDIR")[-1] == DATA_DIR


def test_the_final_stage_has_no_compiler_and_takes_only_the_environment_from_the_builder(
    stages: list[list[Instruction]],
) -> None:
    final = stages[-1]
    assert not [command for command in values(final, "RUN") if COMPILERS.search(command) or "apt-get" in command]
    assert values(final, "COPY") == ["--from=builder /opt/venv /opt/venv"]


def test_the_dependencies_are_the_locked_ones_without_the_dev_tools(stages: list[list[Instruction]]) -> None:
    builder = stages[0]
    syncs = [command for command in values(builder, "RUN") if "uv sync" in command]
    assert syncs and all("--frozen --no-dev --no-editable" in command for command in syncs)
    assert "UV_PROJECT_ENVIRONMENT=/opt/venv" in " ".join(values(builder, "ENV"))


def test_uv_is_the_version_bootstrap_installs(dockerfile: DockerfileParser, stages: list[list[Instruction]]) -> None:
    bootstrap = re.search(r'^UV_VERSION="([^"]+)"', (ROOT / "scripts/bootstrap").read_text(), re.MULTILINE)
    assert bootstrap is not None
    assert f"UV_VERSION={bootstrap.group(1)}" in values(stages[0], "ARG")
    assert any('"uv==${UV_VERSION}"' in command for command in values(stages[0], "RUN"))


def test_the_image_runs_zapflow_on_the_port_it_exposes(stages: list[list[Instruction]]) -> None:
    final = stages[-1]
    assert [json.loads(value) for value in values(final, "ENTRYPOINT")] == [["zapflow"]]
    (command,) = [json.loads(value) for value in values(final, "CMD")]
    assert command[0] == "gateway"
    assert values(final, "EXPOSE") == [command[command.index("--port") + 1]]


def test_the_root_filesystem_can_be_read_only(dockerfile: DockerfileParser) -> None:
    environment = dockerfile.envs
    assert environment["PYTHONDONTWRITEBYTECODE"] == "1"
    # The one writable place besides the data directory: an emptyDir in the chart.
    assert environment["HOME"] == environment["TMPDIR"] == "/tmp"  # noqa: S108
    assert environment["PATH"].startswith("/opt/venv/bin:")


def test_no_secret_is_baked_in(stages: list[list[Instruction]]) -> None:
    for stage in stages:
        for instruction in stage:
            if instruction["instruction"] in ("ARG", "ENV"):
                names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", instruction["value"])
                assert names and not [name for name in names if SECRET_LIKE.search(name)], instruction["content"]


def test_the_labels_describe_this_release(dockerfile: DockerfileParser) -> None:
    labels = dockerfile.labels
    project = pyproject()["project"]
    assert labels["org.opencontainers.image.version"] == project["version"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.title"] == project["name"]
    assert labels["org.opencontainers.image.base.name"] == dockerfile.parent_images[-1]


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".venv/bin/python",
        ".zapflow/zapflow.db",
        "tests/conftest.py",
        ".env",
        "services/x/__pycache__/a.pyc",
    ],
)
def test_the_build_context_leaves_out_local_state(path: str, ignore_patterns: list[str]) -> None:
    assert dockerignored(path, ignore_patterns)


def test_the_build_context_has_what_the_dockerfile_copies(
    stages: list[list[Instruction]], ignore_patterns: list[str]
) -> None:
    sources = [
        source
        for stage in stages
        for copy in values(stage, "COPY")
        if not copy.startswith("--from=")
        for source in copy.split()[:-1]
    ]
    assert sources
    assert [source for source in sources if dockerignored(source, ignore_patterns)] == []
    assert not dockerignored("services/zapflow/gateway/app.py", ignore_patterns)
