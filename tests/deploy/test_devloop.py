"""skaffold.yaml and the Tiltfile agree with the chart, the Dockerfile and each other.

Neither tool runs here. skaffold.yaml is read as YAML; the Tiltfile is Starlark kept to the part
that is also Python, so it is executed against stand-ins for Tilt's functions that record what it
declares. The chart is rendered with the values each tool gives it, under each tool's release name,
and the names, ports and images they use are looked up in what it renders. The Tiltfile's restart
supervisor is run for real, around a stand-in `zapflow`.
"""

from __future__ import annotations

import ast
import builtins
import copy
import functools
import os
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from kubernetes_validate.utils import latest_version

from tests.deploy.chart import (
    CHART_CRD_API_VERSIONS,
    CHART_DIR,
    Object,
    by_component,
    chart,
    component,
    of_kind,
    user_values,
)

ROOT = Path(__file__).resolve().parents[2]
SKAFFOLD = ROOT / "skaffold.yaml"
TILTFILE = ROOT / "Tiltfile"
CHART_IMAGE = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["image"]["repository"]
# The surfaces a developer opens from their machine.
FORWARDED = {"gateway", "handoff", "sandbox"}
TILT_LABELS = {"edge", "core", "human", "dev"}

# Python syntax that Starlark does not have: the Tiltfile must not use it.
NOT_STARLARK = (
    ast.Import,
    ast.ImportFrom,
    ast.ClassDef,
    ast.While,
    ast.Try,
    ast.With,
    ast.Global,
    ast.Nonlocal,
    ast.Lambda,
    ast.JoinedStr,
    ast.Set,
    ast.SetComp,
    ast.Yield,
    ast.YieldFrom,
    ast.Await,
    ast.AsyncFunctionDef,
    ast.Is,
    ast.IsNot,
)
# The built-in functions a Tiltfile may call besides Tilt's own (Starlark's, which Python also has).
STARLARK_BUILTINS = {
    name: getattr(builtins, name)
    for name in (
        *("len", "str", "int", "bool", "list", "dict", "tuple", "range", "enumerate", "zip", "sorted"),
        *("reversed", "any", "all", "min", "max", "print", "hasattr", "getattr", "type", "repr"),
    )
}


# --- the Tiltfile, through stand-ins for Tilt ---


class PortForward(NamedTuple):
    local_port: int
    container_port: int
    name: str | None
    link_path: str | None


@dataclass
class Tilt:
    """What a Tiltfile declared, call by call."""

    images: list[dict[str, Any]] = field(default_factory=list)
    charts: list[dict[str, Any]] = field(default_factory=list)
    manifests: list[Any] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)

    def functions(self) -> dict[str, Any]:
        """Tilt's functions the Tiltfile calls, as stand-ins that record each call."""

        def docker_build(ref: str, context: str, **options: Any) -> None:
            self.images.append({"ref": ref, "context": context, **options})

        def helm(path: str, **options: Any) -> str:
            self.charts.append({"path": path, **options})
            return f"helm:{len(self.charts) - 1}"

        def k8s_yaml(manifests: Any) -> None:
            self.manifests.append(manifests)

        def k8s_resource(**options: Any) -> None:
            self.resources.append(options)

        def port_forward(
            local_port: int, container_port: int, name: str | None = None, link_path: str | None = None
        ) -> PortForward:
            return PortForward(local_port, container_port, name, link_path)

        def sync(local_path: str, remote_path: str) -> tuple[str, str, str]:
            return ("sync", local_path, remote_path)

        def run(cmd: str | list[str]) -> tuple[str, str | list[str]]:
            return ("run", cmd)

        def fall_back_on(files: list[str]) -> tuple[str, list[str]]:
            return ("fall_back_on", files)

        return {
            "docker_build": docker_build,
            "helm": helm,
            "k8s_yaml": k8s_yaml,
            "k8s_resource": k8s_resource,
            "port_forward": port_forward,
            "sync": sync,
            "run": run,
            "fall_back_on": fall_back_on,
        }

    @property
    def image(self) -> dict[str, Any]:
        (only,) = self.images
        return only

    @property
    def release(self) -> dict[str, Any]:
        (only,) = self.charts
        assert self.manifests == ["helm:0"], "the chart is the one thing applied"
        return only

    def steps(self, kind: str) -> list[tuple[Any, ...]]:
        return [step for step in self.image["live_update"] if step[0] == kind]


@functools.cache
def tiltfile() -> Tilt:
    tilt = Tilt()
    code = compile(TILTFILE.read_text(), str(TILTFILE), "exec")
    # The project's own Tiltfile, run with only Tilt's functions and Starlark's built-ins in reach.
    exec(code, {"__builtins__": STARLARK_BUILTINS, **tilt.functions()})  # noqa: S102
    return tilt


def tilt_resources() -> dict[str, dict[str, Any]]:
    return {resource["new_name"]: resource for resource in tiltfile().resources}


# --- skaffold.yaml ---


@functools.cache
def skaffold() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(SKAFFOLD.read_text())
    return config


def profile(name: str) -> dict[str, Any]:
    """The configuration `skaffold -p NAME` runs: the profile's sections beside the top level's."""
    (chosen,) = [item for item in skaffold()["profiles"] if item["name"] == name]
    sections = {key: value for key, value in chosen.items() if key not in ("name", "activation")}
    # Laying a profile over a section is skaffold's business: the top level leaves them to the profiles.
    assert not set(sections) & set(skaffold()), "a profile section also at the top level"
    return {**skaffold(), **sections}


def helm_release(name: str) -> dict[str, Any]:
    (release,) = profile(name)["deploy"]["helm"]["releases"]
    return release


def artifact() -> str:
    (only,) = skaffold()["build"]["artifacts"]
    image: str = only["image"]
    return image


def image_fields(template: str) -> set[str]:
    """The skaffold template fields a value template uses."""
    return set(re.findall(r"\{\{\s*\.(\w+)\s*\}\}", template))


def skaffold_set_values(release: dict[str, Any]) -> list[str]:
    """The --set expressions skaffold gives helm for a release.

    A value template naming the artifact gets the artifact's name (docs: skaffold.dev/docs/deployers/helm):
    skaffold's post-renderer then puts the reference it built in place of every image that names it.
    """
    templates = [f"{key}={artifact()}" for key in release.get("setValueTemplates", {})]
    return [f"{key}={value}" for key, value in release.get("setValues", {}).items()] + templates


# --- the chart as each tool renders it ---


def release_objects(
    values_files: tuple[str, ...], set_values: tuple[str, ...], release: str, namespace: str
) -> list[Object]:
    """The objects of one release, a copy of the cached render for each caller."""
    return copy.deepcopy(_render(values_files, set_values, release, namespace))


@functools.cache
def _render(values_files: tuple[str, ...], set_values: tuple[str, ...], release: str, namespace: str) -> list[Object]:
    """tests/deploy/chart.py renders one release name; each tool names its own."""
    values = user_values([ROOT / path for path in values_files], set_values)
    manifests = chart().render(values, name=release, namespace=namespace, is_install=True)
    return [
        document
        for template, text in sorted(manifests.items())
        if template.endswith(".yaml")
        for document in yaml.safe_load_all(text)
        if document
    ]


def tilt_objects() -> list[Object]:
    """The chart as the Tiltfile deploys it."""
    release = tiltfile().release
    return release_objects(tuple(release["values"]), tuple(release["set"]), release["name"], release["namespace"])


def skaffold_objects(name: str) -> list[Object]:
    """The chart as a skaffold profile deploys it."""
    release = helm_release(name)
    return release_objects(
        tuple(release["valuesFiles"]), tuple(skaffold_set_values(release)), release["name"], release["namespace"]
    )


def workloads(objects: Iterable[Object]) -> list[Object]:
    return [item for item in objects if item["kind"] in ("Deployment", "Job")]


def containers(item: Object) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = item["spec"]["template"]["spec"]["containers"]
    return found


def security(item: Object, container: dict[str, Any]) -> dict[str, Any]:
    """The security settings a container runs with: its own over its pod's."""
    return {**item["spec"]["template"]["spec"].get("securityContext", {}), **container.get("securityContext", {})}


# --- the Tiltfile's language ---


def test_the_tiltfile_is_starlark_that_python_also_reads() -> None:
    tree = ast.parse(TILTFILE.read_text())
    used = sorted({type(node).__name__ for node in ast.walk(tree) if isinstance(node, NOT_STARLARK)})
    assert used == []
    assert tiltfile().images, "the Tiltfile ran and declared its image"


# --- the image ---


def test_both_tools_build_the_image_the_chart_runs() -> None:
    assert re.fullmatch(r"skaffold/v4beta\d+", skaffold()["apiVersion"])
    (built,) = skaffold()["build"]["artifacts"]
    assert built["image"] == tiltfile().image["ref"] == CHART_IMAGE
    assert (ROOT / built["context"] / built["docker"]["dockerfile"]) == ROOT / "Dockerfile"
    assert tiltfile().image["context"] == "."
    assert "dockerfile" not in tiltfile().image, "Tilt builds the root Dockerfile too"


def test_skaffold_hands_the_image_it_built_to_the_chart() -> None:
    for name in ("dev", "prod"):
        templates = helm_release(name)["setValueTemplates"]
        assert set(templates) == {"image.repository", "image.tag"}, name
        # The artifact's fields, named as skaffold names them (`/`, `-`, `.` and `:` become `_`).
        key = re.sub(r"[/.:-]", "_", artifact())
        assert image_fields(templates["image.repository"]) == {f"IMAGE_REPO_{key}"}, name
        assert image_fields(templates["image.tag"]) <= {f"IMAGE_TAG_{key}", f"IMAGE_DIGEST_{key}"}, name
        for item in workloads(skaffold_objects(name)):
            # What skaffold's post-renderer recognises as its artifact (a digest left in the values would hide it).
            assert {container["image"] for container in containers(item)} == {f"{CHART_IMAGE}:{CHART_IMAGE}"}, name


def test_tilt_finds_the_image_in_every_workload() -> None:
    for item in workloads(tilt_objects()):
        for container in containers(item):
            assert container["image"].partition(":")[0] == tiltfile().image["ref"]


# --- the releases ---


def test_both_tools_deploy_the_chart_with_values_files_that_exist() -> None:
    tilt = tiltfile().release
    dev, prod = helm_release("dev"), helm_release("prod")
    assert ROOT / tilt["path"] == ROOT / dev["chartPath"] == ROOT / prod["chartPath"] == CHART_DIR
    assert tilt["name"] == dev["name"] == prod["name"]
    assert tilt["namespace"] == dev["namespace"] == prod["namespace"]
    for path in [*tilt["values"], *dev["valuesFiles"], *prod["valuesFiles"]]:
        assert (ROOT / path).is_file(), path
    staging = "charts/zapflow/ci/staging-sandbox-values.yaml"
    assert tilt["values"] == dev["valuesFiles"] == [staging]
    assert prod["valuesFiles"] == ["charts/zapflow/ci/production-values.yaml"]


def test_skaffold_dev_is_the_default_of_skaffold_dev_and_prod_is_asked_for() -> None:
    activations = {item["name"]: item.get("activation", []) for item in skaffold()["profiles"]}
    assert activations == {"dev": [{"command": "dev"}], "prod": []}


def test_dev_runs_every_workload_with_the_sandbox_and_prod_without() -> None:
    dev = {component(item) for item in workloads(tilt_objects())}
    assert dev == {component(item) for item in workloads(skaffold_objects("dev"))}
    assert "sandbox" in dev
    assert dev - {component(item) for item in workloads(skaffold_objects("prod"))} == {"sandbox"}


def test_the_dev_settings_are_the_same_in_both_tools() -> None:
    tilt = tiltfile().release["set"]
    skaffold_dev = [expression for expression in skaffold_set_values(helm_release("dev")) if "image." not in expression]
    assert set(skaffold_dev) <= set(tilt)
    # What Tilt sets besides is what its live update needs (next test).
    assert all(expression.startswith("securityContext.") for expression in set(tilt) - set(skaffold_dev))


def test_tilt_can_write_where_it_syncs_and_skaffold_keeps_the_chart_locked_down() -> None:
    for item in workloads(tilt_objects()):
        for container in containers(item):
            settings = security(item, container)
            assert settings["readOnlyRootFilesystem"] is False
            # Root owns /opt/venv in the image, and Tilt's tar gives files to user and group 0.
            assert (settings["runAsUser"], settings["runAsGroup"], settings["runAsNonRoot"]) == (0, 0, False)
    for name in ("dev", "prod"):
        for item in workloads(skaffold_objects(name)):
            for container in containers(item):
                settings = security(item, container)
                assert settings["readOnlyRootFilesystem"] is True, name
                assert settings["runAsNonRoot"] is True and settings["runAsUser"] != 0, name


@pytest.mark.parametrize("tool", ["tilt", "skaffold"])
def test_the_dev_releases_render_valid_objects(tool: str) -> None:
    objects = tilt_objects() if tool == "tilt" else skaffold_objects("dev")
    for item in objects:
        if item["apiVersion"] not in CHART_CRD_API_VERSIONS:
            kubernetes_validate.validate(item, latest_version(), strict=True)


# --- Tilt's resources ---


def test_every_workload_of_the_chart_is_a_tilt_resource_named_after_its_component() -> None:
    rendered = {item["metadata"]["name"]: component(item) for item in workloads(tilt_objects())}
    declared = {resource["workload"]: resource["new_name"] for resource in tiltfile().resources}
    assert declared == rendered
    for resource in tiltfile().resources:
        assert len(resource["labels"]) == 1 and set(resource["labels"]) <= TILT_LABELS, resource["new_name"]
    assert tilt_resources()["sandbox"]["labels"] == ["dev"]


def test_workloads_that_open_the_database_wait_for_the_migrations() -> None:
    resources = tilt_resources()
    for name, deployment in by_component(tilt_objects(), "Deployment").items():
        variables = {entry["name"] for entry in containers(deployment)[0].get("env", [])}
        expected = ["migrations"] if "ZAPFLOW_DATABASE_URL" in variables else []
        assert resources[name]["resource_deps"] == expected, name
    (job,) = of_kind(tilt_objects(), "Job")
    assert component(job) == "migrations"
    assert resources["migrations"]["resource_deps"] == []


# --- port-forwards ---


def service_ports(objects: list[Object]) -> dict[tuple[str, str], dict[int, str]]:
    """Each Service's ports, by (namespace, name): port -> targetPort."""
    return {
        (service["metadata"]["namespace"], service["metadata"]["name"]): {
            entry["port"]: entry["targetPort"] for entry in service["spec"]["ports"]
        }
        for service in of_kind(objects, "Service")
    }


def test_skaffold_forwards_ports_the_services_expose() -> None:
    objects = skaffold_objects("dev")
    services = service_ports(objects)
    components = {item["metadata"]["name"]: component(item) for item in of_kind(objects, "Service")}
    namespace = helm_release("dev")["namespace"]
    for forward in profile("dev")["portForward"]:
        assert (forward["resourceType"], forward["namespace"]) == ("service", namespace)
        assert forward["port"] in services[(namespace, forward["resourceName"])], forward
    assert {components[forward["resourceName"]] for forward in profile("dev")["portForward"]} == FORWARDED
    assert "portForward" not in profile("prod")


def test_tilt_forwards_the_container_ports_the_services_send_to() -> None:
    objects = tilt_objects()
    services = by_component(objects, "Service")
    deployments = by_component(objects, "Deployment")
    forwarded = set()
    for name, resource in tilt_resources().items():
        for forward in resource["port_forwards"]:
            forwarded.add(name)
            ports = {entry["name"]: entry["containerPort"] for entry in containers(deployments[name])[0]["ports"]}
            targets = {ports[entry["targetPort"]] for entry in services[name]["spec"]["ports"]}
            assert forward.container_port in targets, (name, forward)
    assert forwarded == FORWARDED


def test_both_tools_forward_to_the_same_local_ports() -> None:
    services = {item["metadata"]["name"]: component(item) for item in of_kind(skaffold_objects("dev"), "Service")}
    skaffold_ports = {services[item["resourceName"]]: item["localPort"] for item in profile("dev")["portForward"]}
    tilt_ports = {
        name: forward.local_port for name, resource in tilt_resources().items() for forward in resource["port_forwards"]
    }
    assert skaffold_ports == tilt_ports


def test_the_guide_names_the_forwarded_ports() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text()
    section = guide.split("## Develop against a cluster", 1)[1].split("\n## ", 1)[0]
    for name, resource in tilt_resources().items():
        for forward in resource["port_forwards"]:
            assert f"localhost:{forward.local_port}" in section, name


# --- Tilt's live update ---


def site_packages_of_the_image() -> str:
    """Where the image installs the zapflow package, read from the Dockerfile and pyproject.toml."""
    dockerfile = DockerfileParser(str(ROOT / "Dockerfile"))
    text = dockerfile.content
    environment = re.search(r"UV_PROJECT_ENVIRONMENT=(\S+)", text)
    python = re.search(r"ARG PYTHON_IMAGE=python:(\d+\.\d+)\.", text)
    assert environment and python
    assert re.search(r"uv sync [^\n]*--no-editable", text), "an editable install would leave only a link"
    copies = [item["value"] for item in dockerfile.structure if item["instruction"] == "COPY"]
    venv = environment.group(1)
    assert f"--from=builder {venv} {venv}" in copies, "the final stage has the environment where it was built"
    return f"{venv}/lib/python{python.group(1)}/site-packages"


def test_the_sync_puts_the_package_where_the_image_installed_it() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    (package,) = packages["packages"]
    ((_, local, remote),) = tiltfile().steps("sync")
    assert local == package
    assert (ROOT / local / "__init__.py").is_file()
    assert remote == f"{site_packages_of_the_image()}/{Path(package).name}"


def test_the_live_update_rebuilds_for_dependencies_and_ends_with_the_restart() -> None:
    steps = tiltfile().image["live_update"]
    assert steps[0] == ("fall_back_on", ["pyproject.toml", "uv.lock"])
    assert steps[-1][0] == "run"
    assert set(tiltfile().image["only"]) >= {"pyproject.toml", "uv.lock", "services"}


def restart_program() -> str:
    ((_, command),) = tiltfile().steps("run")
    assert command[:2] == ["python", "-c"]
    program: str = command[2]
    return program


def reloader() -> str:
    entrypoint = tiltfile().image["entrypoint"]
    assert entrypoint[:2] == ["python", "-c"] and len(entrypoint) == 3, "the chart's args follow the program"
    program: str = entrypoint[2]
    return program


def restart_signal(monkeypatch: pytest.MonkeyPatch) -> int:
    """The signal the live update's restart step sends to process 1 (the step run with os.kill caught)."""
    sent: list[tuple[int, int]] = []
    with monkeypatch.context() as patch:
        patch.setattr(os, "kill", lambda pid, signum: sent.append((pid, signum)))
        exec(compile(restart_program(), "restart", "exec"), {})  # noqa: S102
    ((pid, signum),) = sent
    assert pid == 1, "the supervisor is the container's first process"
    return signum


# Says it started once it can take signals: stops on SIGTERM or SIGINT, fails on SIGUSR1.
STAND_IN = """\
import os, signal, sys


def stop(signum, frame):
    print("stopped", signal.Signals(signum).name, flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGUSR1, lambda signum, frame: sys.exit(3))
print("started", os.getpid(), *sys.argv[1:], flush=True)
while True:
    signal.pause()
"""


@pytest.fixture
def supervised(tmp_path: Path) -> Iterable[subprocess.Popen[str]]:
    """The Tiltfile's supervisor as a container runs it, around a stand-in `zapflow` that says what it gets."""
    stand_in = tmp_path / "zapflow"
    stand_in.write_text(f"#!{sys.executable}\n{STAND_IN}")
    stand_in.chmod(0o755)
    environment = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(
        [sys.executable, "-c", reloader(), "conversation", "--port", "8080"],
        env=environment,
        stdout=subprocess.PIPE,
        text=True,
    )
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()
    assert process.stdout is not None
    process.stdout.close()


def started(line: str) -> int:
    word, pid, *args = line.split()
    assert (word, args) == ("started", ["conversation", "--port", "8080"]), line
    return int(pid)


@pytest.mark.timeout(30)
def test_the_supervisor_restarts_zapflow_on_the_restart_steps_signal_and_ends_with_it(
    supervised: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert supervised.stdout is not None
    first = started(supervised.stdout.readline())
    supervised.send_signal(restart_signal(monkeypatch))
    assert supervised.stdout.readline().split() == ["stopped", "SIGTERM"]
    second = started(supervised.stdout.readline())
    assert second != first
    assert supervised.poll() is None
    # zapflow ending by itself ends the container, with its status.
    os.kill(second, signal.SIGUSR1)
    assert supervised.wait(timeout=20) == 3


@pytest.mark.timeout(30)
def test_the_supervisor_passes_sigterm_on(supervised: subprocess.Popen[str]) -> None:
    assert supervised.stdout is not None
    started(supervised.stdout.readline())
    supervised.terminate()
    assert supervised.stdout.readline().split() == ["stopped", "SIGTERM"]
    assert supervised.wait(timeout=20) == 0
