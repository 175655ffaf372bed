"""Knowledge requests over NATS, for the conversation service and the CLI."""

from __future__ import annotations

from typing import TypeVar

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import BaseModel, ValidationError

from zapflow.knowledge.messages import (
    CommitReply,
    CommitRequest,
    EmbedReply,
    EmbedRequest,
    ErrorCode,
    ErrorReply,
    ListReply,
    ListRequest,
    RemoveReply,
    RemoveRequest,
    SearchReply,
    SearchRequest,
    ShowReply,
    ShowRequest,
)
from zapflow.platform import catalogue

R = TypeVar("R", bound=BaseModel)
SEARCH_TIMEOUT_S = 5.0
# An embed or commit request runs the model over up to a few hundred passages.
INGEST_TIMEOUT_S = 300.0


class KnowledgeError(Exception):
    """The request failed; `code` says how, the message says why in words a person can act on."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code


class KnowledgeClient:
    def __init__(self, nc: NATS, search_timeout_s: float = SEARCH_TIMEOUT_S) -> None:
        self._nc = nc
        self._search_timeout_s = search_timeout_s

    async def search(self, tenant: str, request: SearchRequest) -> SearchReply:
        return await self._request("search", tenant, request, SearchReply, self._search_timeout_s)

    async def embed(self, tenant: str, request: EmbedRequest) -> EmbedReply:
        return await self._request("embed", tenant, request, EmbedReply, INGEST_TIMEOUT_S)

    async def commit(self, tenant: str, request: CommitRequest) -> CommitReply:
        return await self._request("commit", tenant, request, CommitReply, INGEST_TIMEOUT_S)

    async def list_documents(self, tenant: str, request: ListRequest | None = None) -> ListReply:
        return await self._request("list", tenant, request or ListRequest(), ListReply, SEARCH_TIMEOUT_S)

    async def show_document(self, tenant: str, request: ShowRequest) -> ShowReply:
        return await self._request("show", tenant, request, ShowReply, SEARCH_TIMEOUT_S)

    async def remove_documents(self, tenant: str, request: RemoveRequest) -> RemoveReply:
        return await self._request("remove", tenant, request, RemoveReply, INGEST_TIMEOUT_S)

    async def _request(self, operation: str, tenant: str, request: BaseModel, reply: type[R], timeout: float) -> R:
        subject = catalogue.knowledge_request_subject(operation, tenant)
        body = request.model_dump_json().encode()
        if len(body) > self._nc.max_payload:
            raise KnowledgeError(
                "invalid",
                f"the request is {len(body):,} bytes; the NATS server takes at most {self._nc.max_payload:,} "
                "(its max_payload): split the document",
            )
        try:
            message = await self._nc.request(subject, body, timeout=timeout)
        except NoRespondersError:
            raise KnowledgeError("unavailable", f"no embedding service serves tenant {tenant}") from None
        except NatsTimeout:
            raise KnowledgeError("unavailable", f"the embedding service did not answer within {timeout:g}s") from None
        except NatsError as failure:  # the connection closed or is reconnecting
            raise KnowledgeError("unavailable", f"NATS failed: {type(failure).__name__}") from None
        try:
            return reply.model_validate_json(message.data)
        except ValidationError:
            pass
        try:
            error = ErrorReply.model_validate_json(message.data)
        except ValidationError:
            raise KnowledgeError(
                "failed", f"the embedding service gave an answer that is not a {reply.__name__}"
            ) from None
        raise KnowledgeError(error.code, error.error)
