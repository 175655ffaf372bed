"""JSON read with limits, so that no body can exhaust the stack or the memory.

pydantic-core's parser (jiter, in Rust) gives up past 200 levels of nesting without touching
Python's stack, refuses lone surrogates and NaN, and is at least as fast as the standard
library's on webhook-sized bodies. Before it runs, a count of the raw bytes bounds how many
values the body can hold (each needs a comma or a bracket), so a small body cannot expand into
millions of Python objects; after it, one walk checks depth, sizes and string lengths against
limits far above anything Meta documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pydantic_core


class PayloadError(ValueError):
    """A webhook body, or a part of one, that zapflow cannot read; the message says why."""


@dataclass(frozen=True)
class JsonLimits:
    max_depth: int = 32
    """Deepest nesting of arrays and objects (Meta's deepest documented payload has 8)."""
    max_items: int = 5_000
    """Most elements in one array or members in one object."""
    max_string_chars: int = 131_072
    """Longest string or key (a customer's text has at most 65,536 characters)."""
    max_values: int = 250_000
    """Most values in a whole body."""


def load_bounded(body: bytes, limits: JsonLimits) -> Any:
    """The JSON document in body, or PayloadError naming the first limit it breaks."""
    # Every value but the first is preceded by a comma or opens a container: an upper bound.
    commas, containers = body.count(b","), body.count(b"[") + body.count(b"{")
    if commas + containers > limits.max_values:
        raise PayloadError(f"body holds more than {limits.max_values} values")
    try:
        document = pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as error:
        if str(error).startswith("recursion limit exceeded"):
            raise PayloadError(f"arrays and objects nest deeper than {limits.max_depth} levels") from None
        raise PayloadError(f"body is not JSON: {error}") from None
    # The same counts bound the rest: nesting by the containers, a container's items by the
    # commas, a string by the body's length. Most webhooks are small enough to skip the walk.
    within_bounds = containers <= limits.max_depth and commas < limits.max_items
    if not (within_bounds and len(body) <= limits.max_string_chars):
        _check_limits(document, limits, strings=len(body) > limits.max_string_chars)
    return document


def _check_limits(document: Any, limits: JsonLimits, strings: bool) -> None:
    """Depth, sizes and (when `strings`) string lengths, in one walk over the containers only."""
    if not isinstance(document, list | dict):
        return
    max_depth, max_items, max_chars = limits.max_depth, limits.max_items, limits.max_string_chars
    # An explicit stack: the walk must not recurse on the very input it guards against.
    pending: list[tuple[list[Any] | dict[str, Any], int]] = [(document, 1)]
    while pending:
        container, depth = pending.pop()
        if depth > max_depth:
            raise PayloadError(f"arrays and objects nest deeper than {max_depth} levels")
        if len(container) > max_items:
            raise PayloadError(f"an array or object has more than {max_items} items")
        if isinstance(container, dict):
            if strings and any(len(key) > max_chars for key in container):
                raise PayloadError(f"a string is longer than {max_chars} characters")
            children: Any = container.values()
        else:
            children = container
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                pending.append((child, depth + 1))
            elif strings and kind is str and len(child) > max_chars:
                raise PayloadError(f"a string is longer than {max_chars} characters")
