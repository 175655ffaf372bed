"""zapflow: a multi-tenant WhatsApp Cloud API bot platform."""

__version__ = "0.1.0"
