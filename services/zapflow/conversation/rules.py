"""The `rules` responder: keyword, regex and button-id rules from the tenant spec, offline."""

from __future__ import annotations

import re
import unicodedata

from zapflow.conversation.responder import Answer, TurnInput, handoff_action
from zapflow.tenants.model import BotSpec, ReplySpec, RuleSpec
from zapflow.v1 import inbound_pb2, outbound_pb2
from zapflow.whatsapp.messages import message_text


def normalise(text: str) -> str:
    """Case- and accent-insensitive form: "Olá, PREÇO" and "ola, preco" compare equal."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _keyword_hit(keyword: str, folded_text: str) -> bool:
    """The keyword (a word or a phrase) appears whole in text already `normalise`d."""
    return re.search(rf"(?<!\w){re.escape(normalise(keyword))}(?!\w)", folded_text) is not None


def rule_matches(rule: RuleSpec, message: inbound_pb2.InboundMessage) -> bool:
    if message.WhichOneof("content") == "interactive" and message.interactive.id in rule.match.button_ids:
        return True
    text = message_text(message)
    if not text:
        return False
    folded = normalise(text)
    if any(_keyword_hit(k, folded) for k in rule.match.keywords):
        return True
    return rule.match.regex is not None and re.search(rule.match.regex, text, re.IGNORECASE) is not None


def answer(bot: BotSpec, messages: tuple[inbound_pb2.InboundMessage, ...], first_contact: bool) -> Answer:
    """The latest message that fires a rule wins; a first contact gets the greeting before it.

    A burst is read newest first: "hi ... actually, what are your prices?" is about prices.
    """
    greeting = (bot.greeting,) if first_contact and bot.greeting is not None else ()
    for message in reversed(messages):
        for rule in bot.rules:
            if rule_matches(rule, message):
                if rule.handoff:
                    # The handoff service tells the customer; the rule's own reply is not sent.
                    return Answer("rule", (), rule=rule.name, actions=(handoff_action("rule", rule.name),))
                assert rule.reply is not None  # the spec requires one without handoff
                return Answer("rule", (*greeting, rule.reply), rule=rule.name)
    if greeting:
        return Answer("greeting", greeting)
    return Answer("fallback", (bot.fallback,))


class RulesResponder:
    """Offline and deterministic: the default responder."""

    name = "rules"

    async def answer(self, turn: TurnInput) -> Answer:
        return answer(turn.tenant.spec.bot, turn.messages, turn.first_contact)


def reply_command(reply: ReplySpec, command: outbound_pb2.OutboundCommand) -> outbound_pb2.OutboundCommand:
    """Fill the body of an outbound command from a reply of the tenant spec."""
    if reply.menu is not None:
        command.interactive.CopyFrom(
            outbound_pb2.OutInteractive(
                body=reply.text,
                header=reply.header,
                footer=reply.footer,
                list=outbound_pb2.ListMenu(
                    button=reply.menu.button,
                    sections=[
                        outbound_pb2.ListSection(
                            title=section.title,
                            rows=[
                                outbound_pb2.ListRow(id=r.id, title=r.title, description=r.description)
                                for r in section.rows
                            ],
                        )
                        for section in reply.menu.sections
                    ],
                ),
            )
        )
    elif reply.buttons:
        command.interactive.CopyFrom(
            outbound_pb2.OutInteractive(
                body=reply.text,
                header=reply.header,
                footer=reply.footer,
                buttons=[outbound_pb2.Button(id=b.id, title=b.title) for b in reply.buttons],
            )
        )
    else:
        command.text.body = reply.text
    return command
