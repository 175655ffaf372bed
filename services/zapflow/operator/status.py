"""A BotTenant's status: its conditions and what they say, computed without a cluster."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SECRETS_RESOLVED = "SecretsResolved"
REGISTRY_SYNCED = "RegistrySynced"
WORKLOAD_SYNCED = "WorkloadSynced"
KNOWLEDGE_SYNCED = "KnowledgeSynced"
READY = "Ready"
# Ready sums these up: a tenant answers only once its secrets exist, the services see it, the
# workload that answers its turns (the shared one, or its dedicated one) is in place and its
# knowledge base holds what its ConfigMaps say.
PARTS = (SECRETS_RESOLVED, REGISTRY_SYNCED, WORKLOAD_SYNCED, KNOWLEDGE_SYNCED)


@dataclass(frozen=True)
class Condition:
    """One condition as the operator found it; `merge` gives it its transition time."""

    type: str
    status: bool
    reason: str
    message: str


def ready(parts: Iterable[Condition]) -> Condition:
    """Ready from the other conditions: True when all are, else the first one that is not, by its reason."""
    known = {part.type: part for part in parts}
    for kind in PARTS:
        part = known.get(kind)
        if part is None:
            return Condition(READY, False, "Pending", f"{kind} has not been checked yet")
        if not part.status:
            return Condition(READY, False, part.reason, part.message)
    return Condition(READY, True, "Synced", "the services serve this tenant")


def invalid_spec(message: str) -> list[Condition]:
    """The conditions of a spec that does not validate: Ready False, naming the broken fields."""
    return [Condition(READY, False, "InvalidSpec", message)]


def merge(previous: Iterable[Mapping[str, Any]], found: Iterable[Condition], now: datetime) -> list[dict[str, Any]]:
    """The status.conditions list: `found` replaces its types, keeping lastTransitionTime when the status is the same.

    Conditions of other types stay as they were, so a condition one sync did not check is not lost.
    """
    by_type = {str(condition.get("type")): dict(condition) for condition in previous}
    for condition in found:
        status = "True" if condition.status else "False"
        before = by_type.get(condition.type, {})
        unchanged = before.get("status") == status and before.get("lastTransitionTime")
        by_type[condition.type] = {
            "type": condition.type,
            "status": status,
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": before["lastTransitionTime"] if unchanged else timestamp(now),
        }
    order = {kind: index for index, kind in enumerate((READY, *PARTS))}
    return sorted(by_type.values(), key=lambda condition: (order.get(condition["type"], len(order)), condition["type"]))


def status_patch(
    previous: Mapping[str, Any], found: Iterable[Condition], generation: int | None, now: datetime
) -> dict[str, Any]:
    """The fields of status to patch after a sync of `generation` found these conditions."""
    found = list(found)
    conditions = merge(previous.get("conditions") or [], found, now)
    patch: dict[str, Any] = {"conditions": conditions}
    if generation is not None:
        patch["observedGeneration"] = generation
    return patch


def condition_patch(previous: Mapping[str, Any], found: Condition, now: datetime) -> dict[str, Any]:
    """The status fields to patch when one part is checked between syncs (Ready follows); empty: no change."""
    held = [
        Condition(str(c.get("type")), c.get("status") == "True", str(c.get("reason")), str(c.get("message")))
        for c in previous.get("conditions") or []
        if c.get("type") in PARTS and c.get("type") != found.type
    ]
    conditions = merge(previous.get("conditions") or [], [found, ready([*held, found])], now)
    return {} if conditions == list(previous.get("conditions") or []) else {"conditions": conditions}


@dataclass(frozen=True)
class Figures:
    """A tenant's figures at a glance; None: not read (no database, no knowledge service, no turn yet)."""

    agents: int | None = None
    last_turn_at: datetime | None = None
    knowledge_chunks: int | None = None


def figures_patch(previous: Mapping[str, Any], figures: Figures) -> dict[str, Any]:
    """The status fields to patch for these figures: the changed ones; None removes one no longer read."""
    found = {
        "agents": figures.agents,
        "lastTurnAt": timestamp(figures.last_turn_at) if figures.last_turn_at else None,
        "knowledgeChunks": figures.knowledge_chunks,
    }
    return {field: value for field, value in found.items() if previous.get(field) != value}


def synced_before(status: Mapping[str, Any]) -> bool:
    """Whether the last sync wrote the tenant to the registry (what drift repair may restore)."""
    conditions = status.get("conditions") or []
    return any(c.get("type") == REGISTRY_SYNCED and c.get("status") == "True" for c in conditions)


def timestamp(moment: datetime) -> str:
    """RFC 3339 to the second, as Kubernetes writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
