"""Every HTTP surface answers any request below 500: schemathesis against each service's OpenAPI, over real HTTP.

The services run as the processes `zapflow dev` runs, on a real nats-server, redis-server and
SQLite store, with a tenant applied; the sandbox plays Meta and relays to the real gateway, which
answers through the conversation service. The schemas come from the app objects (the factory
serves none; the sandbox serves its own, and one test checks it is the same document), so the
fuzzer sends what the code declares: valid requests and requests that break the schema.

A route behind a credential is fuzzed twice per case: as generated (a random Authorization,
refused) and as its rightful caller (admin token, metrics token, the number's Graph API token).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
import yaml
from fastapi import FastAPI
from pydantic import SecretStr
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.support.cli import cli_environment, run_zapflow
from tests.support.servers import ManagedServer, nats_server, redis_server
from tests.support.tenants import tenant_document
from zapflow.conversation.app import conversation_service
from zapflow.conversation.settings import ConversationSettings
from zapflow.gateway.app import GATEWAY
from zapflow.gateway.settings import GatewaySettings
from zapflow.handoff.accounts import Accounts
from zapflow.handoff.app import HANDOFF
from zapflow.handoff.settings import HandoffSettings
from zapflow.platform import servers
from zapflow.platform.service import create_app
from zapflow.platform.settings import CoreSettings
from zapflow.platform.supervisor import Supervisor, settings_environment
from zapflow.recorder.app import RECORDER
from zapflow.recorder.settings import RecorderSettings
from zapflow.sandbox.app import sandbox_service
from zapflow.sandbox.settings import SandboxSettings
from zapflow.scheduler.app import SCHEDULER
from zapflow.scheduler.settings import SchedulerSettings
from zapflow.store.engine import create_engine

ADMIN_TOKEN = "fuzz-admin-token"
METRICS_TOKEN = "fuzz-metrics-token"
# The tenant's number, and customers' numbers: the fuzzer draws them half of the time, so that
# requests reach past "unknown number" into the code that serves a known one.
NUMBER = "100000000000777"
CUSTOMERS = ["5511987650001", "+55 (11) 98765-0002"]
GRAPH_API = "/{api_version}/{phone_number_id}/messages"
GRAPH_API_VERSION = "v21.0"
GRAPH_API_TOKEN = "fuzz-graph-api-token"

FUZZ = hypothesis.settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    # Generation is bounded by the schemas, and the service fixture is module-scoped on purpose.
    suppress_health_check=list(hypothesis.HealthCheck),
)
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20240909,
        # The chat's event stream never ends: its first event ("ready") is enough to judge it.
        "max-stream-events": 1,
        "request-timeout": 10,
        "dictionaries": {"number": {"values": [NUMBER]}, "customer": {"values": CUSTOMERS}},
        "parameters": {
            f"{location}.{name}": {"dictionary": dictionary, "probability": 0.5}
            for location, name, dictionary in (
                ("query", "phone_number_id", "number"),
                ("body", "phone_number_id", "number"),
                ("query", "contact", "customer"),
                ("query", "to", "customer"),
                ("body", "from", "customer"),
            )
        },
    }
)
CHECKS = [not_a_server_error, response_schema_conformance]
# Routes where the sandbox signs a webhook, posts it to the gateway and reports its answer.
RELAYED_TO_THE_GATEWAY = {"/sandbox/chat/send", "/sandbox/inbound"}
FAULTS = "/sandbox/faults"
OperationCase = Case[Any]


def schema_of(app: FastAPI) -> OpenApiSchema:
    return schemathesis.openapi.from_dict(app.openapi(), config=CONFIG)


APPS = {
    "gateway": create_app(GATEWAY, GatewaySettings()),
    "conversation": create_app(conversation_service(), ConversationSettings()),
    "recorder": create_app(RECORDER, RecorderSettings()),
    "scheduler": create_app(SCHEDULER, SchedulerSettings()),
    "sandbox": create_app(sandbox_service(SandboxSettings()), SandboxSettings()),
    "handoff": create_app(HANDOFF, HandoffSettings()),
}
GATEWAY_API, CONVERSATION_API, RECORDER_API, SCHEDULER_API, SANDBOX_API, HANDOFF_API = (
    schema_of(app) for app in APPS.values()
)
# The inbox API's rightful caller: an agent of the fuzzed tenant, by bearer token.
AGENT_EMAIL = "fuzz-agent@example.com"
AGENT_PASSWORD = "fuzz-agent-password"
INBOX_API = "/api/v1/"
# Every route whose schema declares a body, as (service, path): the hostile bodies go to each.
ROUTES_TAKING_A_BODY = [
    (service, path)
    for service, app in APPS.items()
    for path, operations in app.openapi()["paths"].items()
    if "requestBody" in operations.get("post", {})
]
# What schemathesis does not generate: bodies built to exhaust a parser, the stack or the memory.
HOSTILE_BODIES = {
    "arrays-100000-deep": b"[" * 100_000 + b"]" * 100_000,
    "objects-900-deep": b'{"a":' * 900 + b"1" + b"}" * 900,
    "a-field-900-deep": b'{"phone_number_id":' + b"[" * 900 + b"]" * 900 + b"}",
    "300000-values": b'{"a":[' + b"1," * 299_999 + b"1]}",
    "3-mb-string": b'{"a":"' + b"x" * 3_000_000 + b'"}',
    "5000-digit-integer": b'{"a":' + b"9" * 5000 + b"}",
    "nan": b'{"a":NaN}',
    "lone-surrogate": b'{"a":"\\ud800"}',
    "not-utf8": b'{"a":"\xff\xfe"}',
    "truncated": b'{"messaging_product":"whatsapp","to":',
    "empty": b"",
}


def credential_for(path: str, agent_token: str) -> dict[str, str]:
    """The Authorization header of the caller a route is for (none for open routes)."""
    if path.startswith(INBOX_API) and agent_token:
        return {"Authorization": f"Bearer {agent_token}"}
    if path.startswith("/admin/"):
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    if path == "/metrics":
        return {"Authorization": f"Bearer {METRICS_TOKEN}"}
    if path == GRAPH_API:
        return {"Authorization": f"Bearer {GRAPH_API_TOKEN}"}
    return {}


@dataclass(frozen=True)
class Stack:
    urls: dict[str, str]
    agent_token: str

    def fuzz(self, case: OperationCase, service: str) -> None:
        """The case as generated; then, behind a credential, as the caller who holds it."""
        self._call(case, service)
        rightful = self._as_rightful_caller(case)
        if rightful is not None:
            self._call(rightful, service)

    def _call(self, case: OperationCase, service: str) -> None:
        response = case.call_and_validate(base_url=self.urls[service], checks=CHECKS)
        if case.path in RELAYED_TO_THE_GATEWAY and response.status_code == 200:
            answer = response.json()
            assert answer["gateway_status"] < 500, f"the gateway answered {answer}"
        if case.path == FAULTS and case.method == "POST":
            # An injected "500" fault makes the next sends answer 500 on purpose, as Meta would.
            httpx.delete(f"{self.urls[service]}{FAULTS}").raise_for_status()

    def _as_rightful_caller(self, case: OperationCase) -> OperationCase | None:
        credential = credential_for(case.path, self.agent_token)
        if not credential:
            return None
        headers = case.headers.copy()
        headers.update(credential)
        rightful = case.derive(headers=headers)
        if case.path == GRAPH_API:  # the token is good for the tenant's number only
            rightful.path_parameters.update(api_version=GRAPH_API_VERSION, phone_number_id=NUMBER)
        return rightful


@pytest.fixture(scope="module")
def infrastructure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ManagedServer, ManagedServer]]:
    root = tmp_path_factory.mktemp("fuzz-servers")
    (root / "redis").mkdir()
    nats, redis = nats_server(root / "jetstream"), redis_server(root / "redis")
    nats.start()
    try:
        redis.start()
        yield nats, redis
    finally:
        redis.stop()
        nats.stop()


@pytest.fixture(scope="module")
def stack(
    infrastructure: tuple[ManagedServer, ManagedServer],
    migrated_database: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """Gateway, conversation, recorder, scheduler, sandbox and handoff, each its own process, with one tenant."""
    nats, redis = infrastructure
    workdir = tmp_path_factory.mktemp("fuzz-stack")
    shutil.copyfile(migrated_database, workdir / "zapflow.db")
    core = CoreSettings.model_construct(
        nats_url=nats.url,
        redis_url=f"{redis.url}/0",
        database_url=f"sqlite+aiosqlite:///{workdir / 'zapflow.db'}",
        analytics_path=workdir / "analytics.duckdb",
        admin_token=SecretStr(ADMIN_TOKEN),
        metrics_token=SecretStr(METRICS_TOKEN),
    )
    # Sends are answered at once and no status webhooks follow: the fuzzer judges answers only.
    env = cli_environment(**settings_environment(core), ZAPFLOW_SANDBOX_STATUSES="off")
    names = ("gateway", "conversation", "recorder", "scheduler", "sandbox", "handoff")
    ports = {name: servers.free_port() for name in names}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    tenant = tenant_document(graph_api_url=urls["sandbox"])
    tenant["spec"]["whatsapp"].update(phoneNumberId=NUMBER, accessToken={"value": GRAPH_API_TOKEN})
    tenant_file = workdir / "tenant.yaml"
    tenant_file.write_text(yaml.safe_dump(tenant))
    applied = run_zapflow(env, "tenant", "apply", "-f", str(tenant_file), cwd=workdir)
    assert applied.returncode == 0, applied.stderr
    agent_token = asyncio.run(_agent_token(core.database_url, tenant["metadata"]["name"]))
    options = {"sandbox": ("--webhook-url", f"{urls['gateway']}/webhook/whatsapp", "--tenant-file", str(tenant_file))}
    supervisor = Supervisor()
    try:
        supervisor.start(
            *(
                servers.zapflow_service(
                    name, name, port, *options.get(name, ()), log=workdir / f"{name}.log", env=env, cwd=workdir
                )
                for name, port in ports.items()
            )
        )
        yield Stack(urls, agent_token)
    finally:
        supervisor.stop()


async def _agent_token(database_url: str, tenant: str) -> str:
    engine = create_engine(database_url)
    try:
        accounts = Accounts(engine)
        await accounts.add(tenant, AGENT_EMAIL, "Fuzz", AGENT_PASSWORD)
        return await accounts.issue_token(tenant, AGENT_EMAIL, "fuzz")
    finally:
        await engine.dispose()


def test_only_the_sandbox_serves_an_openapi_document_and_it_is_the_one_fuzzed(stack: Stack) -> None:
    for service, url in stack.urls.items():
        served = httpx.get(f"{url}/openapi.json")
        if service == "sandbox":
            assert served.status_code == 200
            assert served.json() == APPS["sandbox"].openapi()
        else:
            assert served.status_code == 404, service


@GATEWAY_API.parametrize()
@FUZZ
def test_the_gateway_answers_every_request_below_500(case: OperationCase, stack: Stack) -> None:
    stack.fuzz(case, "gateway")


@CONVERSATION_API.parametrize()
@FUZZ
def test_the_conversation_service_answers_every_request_below_500(case: OperationCase, stack: Stack) -> None:
    stack.fuzz(case, "conversation")


@RECORDER_API.parametrize()
@FUZZ
def test_the_recorder_answers_every_request_below_500(case: OperationCase, stack: Stack) -> None:
    stack.fuzz(case, "recorder")


@SCHEDULER_API.parametrize()
@FUZZ
def test_the_scheduler_and_its_admin_api_answer_every_request_below_500(case: OperationCase, stack: Stack) -> None:
    stack.fuzz(case, "scheduler")


@SANDBOX_API.parametrize()
@FUZZ
def test_the_sandbox_answers_every_request_below_500(case: OperationCase, stack: Stack) -> None:
    stack.fuzz(case, "sandbox")


@HANDOFF_API.parametrize()
@FUZZ
def test_the_handoff_service_and_its_inbox_api_answer_every_request_below_500(
    case: OperationCase, stack: Stack
) -> None:
    stack.fuzz(case, "handoff")


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_a_hostile_body_gets_a_reason_below_500_on_every_route_that_takes_one(stack: Stack, body: bytes) -> None:
    with httpx.Client(timeout=30) as client:
        for service, path in ROUTES_TAKING_A_BODY:
            url = stack.urls[service] + path.format(
                api_version=GRAPH_API_VERSION, phone_number_id=NUMBER, conversation_id=1
            )
            for credential in ({}, credential_for(path, stack.agent_token)):
                answer = client.post(url, content=body, headers={"Content-Type": "application/json", **credential})
                where = f"POST {path} {'with' if credential else 'without'} credentials: {answer.text[:300]}"
                assert answer.status_code < 500, where
                if answer.status_code >= 400:
                    # FastAPI's and the sandbox's own {"detail": ...}, or Meta's {"error": {...}};
                    # short: a refusal does not echo the body back.
                    assert answer.json().get("detail") or answer.json().get("error"), where
                    assert len(answer.content) < 4096, where
                elif path in RELAYED_TO_THE_GATEWAY:
                    assert answer.json()["gateway_status"] < 500, where
