"""Signed hostile webhook bodies, deterministic for a seed, and what a gateway answered them.

Each body is a mutation of the shapes Meta documents for WhatsApp webhooks, as an attacker
holding an app secret would write them, or as Meta changing a field would: a field of the wrong
type or missing, an array repeated hundreds of times, nesting thousands deep, hostile strings,
numbers and ids (ids become NATS subjects, Redis keys and dedup ids), duplicate keys, invalid
UTF-8, truncated JSON, a top that is no notification, one bad message beside a good one. Most
are signed with the tenant's app secret, so they reach the parser; a share is unsigned, badly
signed, names a number no tenant owns, or is larger than the gateway takes.

Body i depends only on (seed, i, tenants, epoch), never on the bodies before it: they are made
one at a time while they are sent (a few are megabytes), by the bench's `hostile` phase and by
tests/integration/test_hostile_webhooks.py alike.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bench.results import HostileAnswer, HostileFigures, Latency, PartsCheck
from zapflow.platform import catalogue
from zapflow.v1 import inbound_pb2
from zapflow.whatsapp.signature import SIGNATURE_HEADER, sign, signature_matches
from zapflow.whatsapp.webhook import phone_number_ids_hint

WEBHOOK_PATH = "/webhook/whatsapp"


# Contacts: hostile parts write from a small pool (their messages merge into turns, as a flood
# from a few senders would); a good part of a body has a contact of its own, so that it can be
# looked up in JetStream afterwards.
POOL_CONTACTS = 200
HOSTILE_PREFIX = "5514"
GOOD_PREFIX = "5513"
FOREIGN_PREFIX = "5512"

# --- JSON that json.dumps will not write ----------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text spliced in verbatim: deep nests, NaN, numbers of thousands of digits, bad bytes."""

    text: bytes


@dataclass(frozen=True)
class Pairs:
    """An object written member by member, so that a key may come twice."""

    members: tuple[tuple[str, Any], ...]


def encode(value: Any) -> bytes:
    """The JSON text of a tree of dicts, lists, scalars, Raw and Pairs (compact, ASCII-escaped)."""
    out: list[bytes] = []
    pending: list[Any] = [value]
    # An explicit stack: the trees are shallow, but nothing here should recurse on hostile input.
    while pending:
        item = pending.pop()
        if isinstance(item, bytes):
            out.append(item)
        elif isinstance(item, Raw):
            out.append(item.text)
        elif isinstance(item, dict | Pairs):
            members = item.members if isinstance(item, Pairs) else tuple(item.items())
            pending.append(b"}")
            for position, (key, child) in reversed(list(enumerate(members))):
                pending.append(child)
                pending.append((b"," if position else b"") + json.dumps(key).encode() + b":")
            pending.append(b"{")
        elif isinstance(item, list):
            pending.append(b"]")
            for position, child in reversed(list(enumerate(item))):
                pending.append(child)
                if position:
                    pending.append(b",")
            pending.append(b"[")
        else:
            out.append(json.dumps(item).encode())
    return b"".join(out)


# --- what a body is -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    """Whom the bodies speak for: a tenant's name, number and app secret."""

    name: str
    phone_number_id: str
    app_secret: str


@dataclass(frozen=True)
class Part:
    """A message a body carries whose fate is checked in JetStream afterwards."""

    tenant: str
    contact: str
    wamid: str


@dataclass(frozen=True)
class HostileBody:
    index: int
    kind: str
    body: bytes
    headers: dict[str, str]
    # What the gateway should answer, from the envelope alone (size, the numbers the raw bytes
    # claim, the signature): 413, 401, 403, or 200 for a body its tenant signed, however broken.
    expected: frozenset[int]
    # Good messages: in JetStream once the body is answered 200, whatever their neighbours are.
    readable: tuple[Part, ...] = ()
    # Messages naming a tenant whose secret did not sign the body: never in JetStream.
    foreign: tuple[Part, ...] = ()


def expected_answers(body: bytes, header: str | None, tenants: Iterable[Tenant], max_body_bytes: int) -> frozenset[int]:
    """What a gateway that checks the envelope first (size, owner, signature) answers this body."""
    if len(body) > max_body_bytes:
        return frozenset({413})
    by_number = {tenant.phone_number_id: tenant for tenant in tenants}
    claimed = phone_number_ids_hint(body)
    owners = [by_number[number] for number in claimed if number in by_number]
    if not owners:
        return frozenset({403})
    if not header:
        return frozenset({401})
    signers = {tenant.phone_number_id for tenant in owners if signature_matches(body, header, tenant.app_secret)}
    if not signers:
        return frozenset({403})
    # A number the signature does not cover: refused whole, or that part dead-lettered.
    return frozenset({200, 403}) if claimed - signers else frozenset({200})


# --- the shapes Meta documents --------------------------------------------------------------------

_MEDIA = {"id": "1166846181421424", "mime_type": "image/jpeg", "sha256": "29ed500fa64eb55fc19dc4124acb300e"}
CONTENT: dict[str, Any] = {
    "text": {"body": "hello, what are your prices?"},
    "image": {**_MEDIA, "caption": "a photo"},
    "video": {**_MEDIA, "mime_type": "video/mp4"},
    "document": {**_MEDIA, "mime_type": "application/pdf", "filename": "invoice.pdf", "caption": "my invoice"},
    "audio": {**_MEDIA, "mime_type": "audio/ogg; codecs=opus", "voice": True},
    "sticker": {**_MEDIA, "mime_type": "image/webp", "animated": False},
    "reaction": {"message_id": "wamid.HBgLMTY1MDUwNzY1MjAVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA", "emoji": "\U0001f44d"},
    "location": {"latitude": -23.5613, "longitude": -46.6565, "name": "MASP", "address": "Av. Paulista, 1578"},
    "contacts": [
        {
            "name": {"formatted_name": "Ana Souza", "first_name": "Ana", "last_name": "Souza"},
            "phones": [{"phone": "+55 11 99999-0000", "wa_id": "5511999990000", "type": "CELL"}],
            "emails": [{"email": "ana@example.com", "type": "WORK"}],
        }
    ],
    "order": {
        "catalog_id": "1537216140281543",
        "text": "deliver before noon",
        "product_items": [{"product_retailer_id": "sku-1", "quantity": 2, "item_price": "9.90", "currency": "BRL"}],
    },
    "interactive": {"type": "button_reply", "button_reply": {"id": "prices", "title": "Prices"}},
    "button": {"payload": "CONFIRM", "text": "Confirm"},
    "system": {"body": "User changed number", "wa_id": "5511888880000", "type": "user_changed_number"},
}
UNSUPPORTED_ERRORS = [{"code": 131051, "title": "Message type unknown", "message": "Message type unknown"}]
STATUS_ERRORS = [
    {
        "code": 131047,
        "title": "Re-engagement message",
        "message": "Re-engagement message",
        "error_data": {"details": "Message failed to send because more than 24 hours have passed"},
    }
]


def message(kind: str, sender: str, wamid: str, epoch: int) -> dict[str, Any]:
    """One inbound message of a documented type."""
    found: dict[str, Any] = {"from": sender, "id": wamid, "timestamp": str(epoch), "type": kind}
    if kind == "unsupported":
        found["errors"] = copy.deepcopy(UNSUPPORTED_ERRORS)
    else:
        found[kind] = copy.deepcopy(CONTENT[kind])
    return found


def status(recipient: str, wamid: str, state: str, epoch: int) -> dict[str, Any]:
    """One delivery status of a message the business sent."""
    found: dict[str, Any] = {
        "id": wamid,
        "status": state,
        "timestamp": str(epoch),
        "recipient_id": recipient,
        "conversation": {"id": "f1c1e0a9b1d5a1c4b5e1f2a3c4d5e6f7", "origin": {"type": "service"}},
        "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"},
    }
    if state == "failed":
        found["errors"] = copy.deepcopy(STATUS_ERRORS)
    return found


def change(phone_number_id: str, messages: list[Any], statuses: list[Any]) -> dict[str, Any]:
    senders = [m["from"] for m in messages if isinstance(m, dict) and isinstance(m.get("from"), str)]
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
        "contacts": [{"profile": {"name": "Hostile Customer"}, "wa_id": sender} for sender in dict.fromkeys(senders)],
        "messages": messages,
    }
    if statuses:
        value["statuses"] = statuses
    return {"field": "messages", "value": value}


def notification(*changes: dict[str, Any]) -> dict[str, Any]:
    return {"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": list(changes)}]}


# --- hostile values ---------------------------------------------------------------------------------

# Strings any parser must survive; "mild" ones leave the body valid JSON within sane sizes.
MILD_STRINGS = (
    "",
    " ",
    "\u200b",
    "\u200b\u200c\u200d\u2060\ufeff",
    "\u202eolleh\u202c",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0643",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u200f\u061c\u200e",
    "\x00",
    "\x1b[31mred\x1b[0m",
    "\r\n\r\n",
    "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",
    "e" + "\u0301" * 2_000,
    "%s%n%x%d",
    "${jndi:ldap://127.0.0.1:1389/a}",
    "<script>alert(1)</script>",
    "'; DROP TABLE messages; --",
    "../../../../etc/passwd",
    '"\\',
    "null",
    "\uff15\uff15\uff11\uff11",
    "\u0665\u0665\u0661\u0661",
)
WILD_STRINGS = ("\ud800", "\udfff\ud800", "a\udbff")
LONG_LENGTHS = (10_000, 65_536, 131_073, 1_000_000)
LONG_UNITS = ("A", "\u200b", "\u05e9", "\U0001f600")

MILD_NUMBERS: tuple[Any, ...] = (
    0,
    -1,
    -(2**63),
    2**63,
    2**64,
    1.5,
    -0.0,
    1e308,
    10**30,
    253_402_300_800,  # the year 10000
    -62_135_596_800,  # the year 1
    2**31,
    1_764_000_000.5,
    "1e3",
    " 1764000000 ",
    "0x10",
    "\u0661\u0667\u0666\u0664",
    "-1764000000",
    "99999999999999999999",
    True,
    "",
    Raw(b"1" + b"0" * 400),
    Raw(b"0." + b"0" * 400 + b"1"),
)
WILD_NUMBERS = (
    Raw(b"1e309"),
    Raw(b"-1e309"),
    Raw(b"NaN"),
    Raw(b"Infinity"),
    Raw(b"-Infinity"),
    Raw(b"1" + b"0" * 5_000),
    Raw(b"-" + b"9" * 100_000),
)
OTHER_TYPES: tuple[Any, ...] = (None, True, 0, -1, 1.5, "", "x", [], [1, "a"], {}, {"a": 1}, [[[]]])

NUMERIC_KEYS = ("timestamp", "latitude", "longitude", "quantity", "code", "item_price")
ID_KEYS = ("from", "id", "wa_id", "recipient_id", "message_id", "phone_number_id", "type", "status", "field")
# A lone byte, a stray continuation, a cut sequence, an encoded surrogate, an overlong and a 5-byte form.
BAD_UTF8 = (b"\xff", b"\x80", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80")
NESTS = ((b"[", b"]"), (b'{"a":', b"}"), (b'[{"a":', b"}]"))
DEPTHS = (33, 200, 1_000, 10_000, 100_000, 1_000_000)
REPEATS = (100, 200, 300, 500, 1_000, 6_000)


def hostile_string(rng: random.Random, mild: bool, max_bytes: int) -> str:
    pick = rng.random()
    if pick < 0.7:
        return rng.choice(MILD_STRINGS)
    if mild:
        # Long, but no longer than a customer may write.
        return "x" * rng.choice((1_000, 10_000))
    if pick < 0.8:
        return rng.choice(WILD_STRINGS)
    unit = rng.choice(LONG_UNITS)
    # Written \uXXXX-escaped unless ASCII: at most an eighth of the body limit, like every long thing.
    return unit * min(rng.choice(LONG_LENGTHS), max_bytes // 8 // (len(json.dumps(unit)) - 2))


def hostile_id(rng: random.Random, mild: bool) -> Any:
    """An id that cannot be a subject token, a Redis key part or a header value as it is."""
    fixed = (
        "a.b",
        "5511.99999",
        "*",
        ">",
        "5511*",
        "5511>",
        "55.11.>",
        "55 11",
        " 5511",
        "5511\t",
        "5511\r\nNats-Msg-Id: x",
        "",
        ".",
        "..",
        "-5511",
        "+5511999999999",
        "0" * 21,
        "9" * 400,
        "5511\u200b",
        "5511\x00",
        "\u00e9",
        "\uff15\uff15\uff11\uff11",
        "\u0665\u0665\u0661\u0661",
        "wamid.*",
        "a" * 1_000,
        catalogue.inbound_subject("x", "y"),
        f"$JS.API.STREAM.DELETE.{catalogue.INBOUND.name}",
    )
    pick = rng.random()
    if pick < 0.75:
        return rng.choice(fixed)
    if pick < 0.9:
        digits = list(f"5511{rng.randrange(10**9):09d}")
        digits.insert(rng.randrange(len(digits)), rng.choice(".*> \u200b\n"))
        return "".join(digits)
    return rng.choice(OTHER_TYPES) if mild else rng.choice((*OTHER_TYPES, *WILD_STRINGS))


def hostile_number(rng: random.Random, mild: bool) -> Any:
    return rng.choice(MILD_NUMBERS if mild or rng.random() < 0.75 else WILD_NUMBERS)


def deep_nest(rng: random.Random, max_bytes: int) -> Raw:
    opener, closer = rng.choice(NESTS)
    # At most an eighth of the body limit: a nest the gateway must read, not one refused for its size.
    depth = min(rng.choice(DEPTHS), max_bytes // 8 // (len(opener) + len(closer)))
    return Raw(opener * depth + b"1" + closer * depth)


# --- the tree and its mutations -------------------------------------------------------------------

Path = tuple[str | int, ...]


def nodes(tree: Any) -> list[tuple[Path, Any]]:
    """Every value below the root with its path, in a stable order."""
    found: list[tuple[Path, Any]] = []
    pending: list[tuple[Path, Any]] = [((), tree)]
    while pending:
        path, value = pending.pop()
        if path:
            found.append((path, value))
        if isinstance(value, dict):
            pending.extend(((*path, key), child) for key, child in reversed(value.items()))
        elif isinstance(value, list):
            pending.extend(((*path, position), child) for position, child in reversed(list(enumerate(value))))
    return found


def replace(tree: Any, path: Path, value: Any) -> Any:
    """The tree with the value at path replaced (in place; the root is returned, maybe the new one)."""
    if not path:
        return value
    parent = tree
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return tree


def delete(tree: Any, path: Path) -> Any:
    parent = tree
    for step in path[:-1]:
        parent = parent[step]
    del parent[path[-1]]
    return tree


@dataclass
class Context:
    """What one body is made from: its own random source, its tenant and the generator's settings."""

    rng: random.Random
    tenant: Tenant
    index: int
    generator: HostileBodies

    @property
    def seed(self) -> int:
        return self.generator.seed

    def wamid(self, n: int) -> str:
        return f"wamid.HOSTILE.{self.seed}.{self.index}.{n}"

    def pool_contact(self) -> str:
        return f"{HOSTILE_PREFIX}{self.rng.randrange(POOL_CONTACTS):08d}"

    def messages(self) -> list[dict[str, Any]]:
        kinds = [*CONTENT, "unsupported"]
        count = self.rng.randint(1, 3)
        return [
            message(self.rng.choice(kinds), self.pool_contact(), self.wamid(n), self.generator.epoch)
            for n in range(count)
        ]

    def statuses(self) -> list[dict[str, Any]]:
        states = ("sent", "delivered", "read", "failed")
        epoch = self.generator.epoch
        return [
            status(self.pool_contact(), f"wamid.OUT.{self.seed}.{self.index}.{n}", self.rng.choice(states), epoch)
            for n in range(self.rng.randint(0, 2))
        ]

    def notification(self, phone_number_id: str | None = None) -> dict[str, Any]:
        """A readable notification: 1-3 messages of documented types and 0-2 statuses."""
        return notification(change(phone_number_id or self.tenant.phone_number_id, self.messages(), self.statuses()))

    def good(self, prefix: str, tenant: Tenant, n: int) -> tuple[dict[str, Any], Part]:
        contact = f"{prefix}{self.index:08d}"
        wamid = self.wamid(n)
        return message("text", contact, wamid, self.generator.epoch), Part(tenant.name, contact, wamid)


@dataclass
class Draft:
    """A body before it is signed: a tree (or its bytes), and the header its signature takes."""

    content: Any
    header: Callable[[bytes], str | None] | None = None  # None: signed with the tenant's app secret
    readable: tuple[Part, ...] = ()
    foreign: tuple[Part, ...] = ()


def wrong_type(c: Context, tree: Any) -> Any:
    path, value = c.rng.choice(nodes(tree))
    others = [other for other in OTHER_TYPES if type(other) is not type(value)]
    return replace(tree, path, c.rng.choice(others))


def missing_field(c: Context, tree: Any) -> Any:
    keyed = [path for path, _ in nodes(tree) if isinstance(path[-1], str)]
    return delete(tree, c.rng.choice(keyed))


def strings_replaced(c: Context, tree: Any, mild: bool = False) -> Any:
    texts = [path for path, value in nodes(tree) if isinstance(value, str)]
    return replace(tree, c.rng.choice(texts), hostile_string(c.rng, mild, c.generator.max_body_bytes))


def numbers_replaced(c: Context, tree: Any, mild: bool = False) -> Any:
    numeric = [path for path, _ in nodes(tree) if path[-1] in NUMERIC_KEYS]
    return replace(tree, c.rng.choice(numeric), hostile_number(c.rng, mild))


def ids_replaced(c: Context, tree: Any, mild: bool = False) -> Any:
    ids = [path for path, _ in nodes(tree) if path[-1] in ID_KEYS]
    return replace(tree, c.rng.choice(ids), hostile_id(c.rng, mild))


def array_repeated(c: Context, tree: Any) -> Any:
    arrays = [(path, value) for path, value in nodes(tree) if isinstance(value, list) and value]
    path, items = c.rng.choice(arrays)
    item = encode(items[0])
    # The point is the count, not the size: at most an eighth of the body limit, at least 100.
    times = max(100, min(c.rng.choice(REPEATS), c.generator.max_body_bytes // 8 // len(item)))
    return replace(tree, path, Raw(b"[" + b",".join([item] * times) + b"]"))


def nested_deep(c: Context, tree: Any) -> Any:
    path, _ = c.rng.choice(nodes(tree))
    return replace(tree, path, deep_nest(c.rng, c.generator.max_body_bytes))


def keys_duplicated(c: Context, tree: Any) -> Any:
    objects = [(path, value) for path, value in [((), tree), *nodes(tree)] if isinstance(value, dict) and value]
    path, members = c.rng.choice(objects)
    key = c.rng.choice(list(members))
    other = c.rng.choice((hostile_id(c.rng, mild=True), c.rng.choice(MILD_STRINGS), *OTHER_TYPES))
    if key == "phone_number_id":
        # The same field naming two numbers: the one the signature covers, and another.
        other = c.rng.choice([t.phone_number_id for t in c.generator.tenants] + ["100000000000999"])
    pairs = list(members.items())
    position = list(members).index(key)
    pairs.insert(position + c.rng.choice((0, 1)), (key, other))
    return replace(tree, path, Pairs(tuple(pairs)))


# Mutations that leave a body valid JSON within sane sizes: the bad message of a "mixed" body
# must not sink the whole body, or its good neighbour could not be read either.
MILD_MUTATIONS: tuple[Callable[[Context, Any], Any], ...] = (
    wrong_type,
    missing_field,
    functools.partial(strings_replaced, mild=True),
    functools.partial(numbers_replaced, mild=True),
    functools.partial(ids_replaced, mild=True),
)


def _tree(mutation: Callable[[Context, Any], Any]) -> Callable[[Context], Draft]:
    return lambda c: Draft(mutation(c, c.notification()))


def invalid_utf8(c: Context) -> Draft:
    body = encode(c.notification())
    # Right after the opening quote of a string value.
    starts = [position + 3 for position in range(len(body)) if body.startswith(b'":"', position)]
    at = c.rng.choice(starts)
    return Draft(body[:at] + c.rng.choice(BAD_UTF8) + body[at:])


def truncated(c: Context) -> Draft:
    body = encode(c.notification())
    # After the number, so that the signature is checked and the parser meets the cut.
    after = body.index(c.tenant.phone_number_id.encode()) + len(c.tenant.phone_number_id) + 1
    return Draft(body[: c.rng.randrange(after, len(body))])


def non_object_top(c: Context) -> Draft:
    good = encode(c.notification())
    claim = encode({"phone_number_id": c.tenant.phone_number_id})
    readable = notification(change(c.tenant.phone_number_id, c.messages(), []))
    variants: tuple[bytes, ...] = (
        b"[" + good + b"]",
        b"[" + good + b"," + good + b"]",
        good + b" " + good,
        good + b" trailing",
        b"null " + claim,
        b"42 " + claim,
        b"true " + claim,
        b"[] " + claim,
        encode(good.decode()),
        claim,
        encode({**readable, "entry": readable["entry"][0]}),
        encode({**readable, "object": "page"}),
        encode({**readable, "object": ["whatsapp_business_account"]}),
        encode({"entry": readable["entry"]}),
    )
    return Draft(c.rng.choice(variants))


def mixed(c: Context) -> Draft:
    """One bad message and one good one, from another contact, in the same messages array."""
    bad = message(c.rng.choice(list(CONTENT)), c.pool_contact(), c.wamid(0), c.generator.epoch)
    bad = c.rng.choice(MILD_MUTATIONS)(c, bad)
    good, part = c.good(GOOD_PREFIX, c.tenant, 1)
    pair = [bad, good] if c.rng.random() < 0.5 else [good, bad]
    return Draft(notification(change(c.tenant.phone_number_id, pair, c.statuses())), readable=(part,))


def cross_tenant(c: Context) -> Draft:
    """Signed by one tenant, with a second change that speaks for another tenant's number."""
    others = [t for t in c.generator.tenants if t != c.tenant]
    other = c.rng.choice(others)
    own, own_part = c.good(GOOD_PREFIX, c.tenant, 0)
    theirs, their_part = c.good(FOREIGN_PREFIX, other, 1)
    own_change = change(c.tenant.phone_number_id, [own], [])
    their_change = change(other.phone_number_id, [theirs], [])
    return Draft(notification(own_change, their_change), readable=(own_part,), foreign=(their_part,))


def unsigned(c: Context) -> Draft:
    return Draft(c.notification(), header=lambda _: None)


def bad_signature(c: Context) -> Draft:
    secret = c.tenant.app_secret
    forged: tuple[Callable[[bytes], str | None], ...] = (
        lambda body: sign(body, secret + "x"),
        lambda body: sign(body, ""),
        lambda body: sign(body[:-1], secret),
        lambda _: "sha256=" + "0" * 64,
        lambda body: "sha1=" + sign(body, secret).removeprefix("sha256="),
        lambda body: sign(body, secret)[:-1],
        lambda _: "sha256=",
        lambda _: "sha256=" + "z" * 4_000,
    )
    return Draft(c.notification(), header=c.rng.choice(forged))


def unknown_number(c: Context) -> Draft:
    owned = {t.phone_number_id for t in c.generator.tenants}
    number = next(n for n in (f"1{c.rng.randrange(10**14):014d}" for _ in range(100)) if n not in owned)
    return Draft(c.notification(number))


def oversized(c: Context) -> Draft:
    text = message("text", c.pool_contact(), c.wamid(0), c.generator.epoch)
    tree = notification(change(c.tenant.phone_number_id, [text], []))
    # Just over the limit, by up to 64 KiB.
    text["text"]["body"] = "x" * (c.generator.max_body_bytes + c.rng.randrange(1, 64 * 1024) - len(encode(tree)))
    return Draft(tree)


def deep_nesting(c: Context) -> Draft:
    """A value somewhere replaced by a deep nest, or the whole notification at the bottom of one."""
    if c.rng.random() < 0.6:
        return Draft(nested_deep(c, c.notification()))
    depth = min(c.rng.choice(DEPTHS), c.generator.max_body_bytes // 16)
    return Draft(b"[" * depth + encode(c.notification()) + b"]" * depth)


@dataclass(frozen=True)
class Kind:
    # How many bodies of this kind every block of DECK bodies holds (each block shuffled): the
    # first DECK bodies already hold every kind, and any run holds them in these shares.
    weight: int
    make: Callable[[Context], Draft]


KINDS = {
    "wrong_type": Kind(24, _tree(wrong_type)),
    "missing_field": Kind(18, _tree(missing_field)),
    "repeated_array": Kind(12, _tree(array_repeated)),
    "deep_nesting": Kind(12, deep_nesting),
    "hostile_string": Kind(22, _tree(strings_replaced)),
    "hostile_number": Kind(16, _tree(numbers_replaced)),
    "hostile_id": Kind(20, _tree(ids_replaced)),
    "duplicate_keys": Kind(10, _tree(keys_duplicated)),
    "invalid_utf8": Kind(10, invalid_utf8),
    "truncated": Kind(10, truncated),
    "non_object_top": Kind(10, non_object_top),
    "mixed": Kind(16, mixed),
    "cross_tenant": Kind(4, cross_tenant),
    "unsigned": Kind(5, unsigned),
    "bad_signature": Kind(5, bad_signature),
    "unknown_number": Kind(5, unknown_number),
    "oversized": Kind(1, oversized),
}
DECK = sum(kind.weight for kind in KINDS.values())


@functools.lru_cache(maxsize=64)
def _deck(seed: int, block: int, tenants: int) -> tuple[str, ...]:
    kinds = [name for name, kind in KINDS.items() for _ in range(kind.weight)]
    if tenants < 2:
        kinds = ["mixed" if kind == "cross_tenant" else kind for kind in kinds]
    random.Random(f"{seed}:deck:{block}").shuffle(kinds)
    return tuple(kinds)


@dataclass(frozen=True)
class HostileBodies:
    """The generator: `body(i)` is the same for the same seed, tenants and epoch, in any order.

    `epoch` is the unix time written in the bodies' timestamps (the gateway refuses times from
    the future and from before WhatsApp, so a caller passes the present).
    """

    seed: int
    tenants: tuple[Tenant, ...]
    epoch: int
    max_body_bytes: int

    def kind(self, index: int) -> str:
        block, position = divmod(index, DECK)
        return _deck(self.seed, block, len(self.tenants))[position]

    def body(self, index: int) -> HostileBody:
        kind = self.kind(index)
        tenant = self.tenants[index % len(self.tenants)]
        rng = random.Random(f"{self.seed}:{index}")
        draft = KINDS[kind].make(Context(rng, tenant, index, self))
        body = draft.content if isinstance(draft.content, bytes) else encode(draft.content)
        header = sign(body, tenant.app_secret) if draft.header is None else draft.header(body)
        headers = {"Content-Type": "application/json"}
        if header is not None:
            headers[SIGNATURE_HEADER] = header
        return HostileBody(
            index=index,
            kind=kind,
            body=body,
            headers=headers,
            expected=expected_answers(body, header, self.tenants, self.max_body_bytes),
            readable=draft.readable,
            foreign=draft.foreign,
        )

    def bodies(self, count: int, start: int = 0) -> Iterator[HostileBody]:
        return (self.body(index) for index in range(start, start + count))


# --- sending them and what came back ----------------------------------------------------------------

ANSWER_SHOWN = 300


def answer_counts(answer: Any, prefix: str = "") -> Counter[str]:
    """The numbers a JSON answer gives (a list counts its items), by dotted key."""
    counts: Counter[str] = Counter()
    if not isinstance(answer, dict):
        return counts
    for key, value in answer.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            counts[name] += value
        elif isinstance(value, list):
            counts[name] += len(value)
        elif isinstance(value, dict):
            counts.update(answer_counts(value, f"{name}."))
    return counts


@dataclass(frozen=True)
class Sent:
    """One body and the gateway's answer (status -1: no HTTP answer; `detail` says why)."""

    body: HostileBody  # without its bytes: 10,000 bodies are half a GiB
    size: int
    status: int
    seconds: float
    detail: str
    counts: Counter[str] = field(default_factory=Counter)


async def post_all(
    client: httpx.AsyncClient, bodies: Iterable[HostileBody], concurrency: int, path: str = WEBHOOK_PATH
) -> list[Sent]:
    """POST every body with at most `concurrency` in flight; each body is made when a slot frees."""
    pending = iter(bodies)
    sent: list[Sent] = []

    async def worker() -> None:
        for hostile in pending:
            kept, size = dataclasses.replace(hostile, body=b""), len(hostile.body)
            started = time.perf_counter()
            try:
                answer = await client.post(path, content=hostile.body, headers=hostile.headers)
            except httpx.HTTPError as error:
                seconds = time.perf_counter() - started
                sent.append(Sent(kept, size, -1, seconds, f"{type(error).__name__}: {error}"))
                continue
            seconds = time.perf_counter() - started
            try:
                counts = answer_counts(answer.json()) if answer.status_code == 200 else Counter[str]()
            except ValueError:
                counts = Counter()
            sent.append(Sent(kept, size, answer.status_code, seconds, answer.text[:ANSWER_SHOWN], counts))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sorted(sent, key=lambda s: s.body.index)


def _example(item: Sent) -> HostileAnswer:
    return HostileAnswer(
        index=item.body.index,
        kind=item.body.kind,
        bytes=item.size,
        status=item.status,
        ms=round(item.seconds * 1000, 1),
        detail=item.detail,
    )


def tally(sent: list[Sent], examples: int = 10) -> HostileFigures:
    """Answers by status and by kind, those no envelope explains, the slowest and the failures."""
    by_kind: defaultdict[str, Counter[str]] = defaultdict(Counter)
    seconds_by_kind: defaultdict[str, list[float]] = defaultdict(list)
    unexpected: defaultdict[str, Counter[str]] = defaultdict(Counter)
    counts: Counter[str] = Counter()
    for item in sent:
        by_kind[item.body.kind][str(item.status)] += 1
        seconds_by_kind[item.body.kind].append(item.seconds)
        if item.status not in item.body.expected:
            unexpected[item.body.kind][str(item.status)] += 1
        counts.update(item.counts)
    statuses = Counter(str(item.status) for item in sent)
    failures = [item for item in sent if item.status >= 500 or item.status < 0]
    slowest = sorted(sent, key=lambda item: -item.seconds)[:examples]
    return HostileFigures(
        bodies=len(sent),
        bytes_sent=sum(item.size for item in sent),
        statuses=dict(sorted(statuses.items())),
        by_kind={kind: dict(sorted(found.items())) for kind, found in sorted(by_kind.items())},
        unexpected={kind: dict(sorted(found.items())) for kind, found in sorted(unexpected.items())},
        server_errors=sum(1 for item in sent if item.status >= 500),
        unanswered=sum(1 for item in sent if item.status < 0),
        failures=[_example(item) for item in failures[:examples]],
        slowest=[_example(item) for item in slowest],
        latency=Latency.of(item.seconds for item in sent),
        latency_by_kind={kind: Latency.of(seconds) for kind, seconds in sorted(seconds_by_kind.items())},
        answer_counts=dict(sorted(counts.items())),
    )


async def _stored_wamid(js: JetStreamContext, part: Part) -> str | None:
    """The wamid of the last message JetStream holds on the part's subject (each part has its own)."""
    try:
        found = await js.get_last_msg(catalogue.INBOUND.name, catalogue.inbound_subject(part.tenant, part.contact))
    except NotFoundError:
        return None
    return inbound_pb2.InboundMessage.FromString(found.data or b"").wamid


async def check_parts(js: JetStreamContext, sent: list[Sent], examples: int = 10) -> PartsCheck:
    """Good messages of bodies answered 200 are in JetStream; messages for an unsigned tenant never are."""
    readable = [part for item in sent if item.status == 200 for part in item.body.readable]
    foreign = [part for item in sent for part in item.body.foreign]
    missing = [part for part in readable if await _stored_wamid(js, part) != part.wamid]
    leaked = [part for part in foreign if await _stored_wamid(js, part) == part.wamid]
    return PartsCheck(
        readable=len(readable),
        readable_stored=len(readable) - len(missing),
        foreign=len(foreign),
        foreign_stored=len(leaked),
        missing_examples=[part.wamid for part in missing[:examples]],
        leaked_examples=[part.wamid for part in leaked[:examples]],
    )
