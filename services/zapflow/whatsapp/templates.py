"""Template messages zapflow sends on its own (a late answer, a re-engagement), from the tenant spec."""

from __future__ import annotations

from zapflow.tenants.model import TemplateRefSpec
from zapflow.v1 import outbound_pb2 as pb

# In a template's body parameters: replaced by the customer's profile name.
CUSTOMER_NAME = "{name}"
# When WhatsApp did not tell us the customer's name.
UNKNOWN_NAME = "there"


def fill_template(command: pb.OutboundCommand, ref: TemplateRefSpec, customer_name: str) -> pb.OutboundCommand:
    """Make the command this template, its parameters filled in for the customer."""
    name = customer_name.strip() or UNKNOWN_NAME
    command.template.CopyFrom(
        pb.OutTemplate(
            name=ref.name,
            language=ref.language,
            category=ref.category,
            body_parameters=[parameter.replace(CUSTOMER_NAME, name) for parameter in ref.body_parameters],
        )
    )
    return command
