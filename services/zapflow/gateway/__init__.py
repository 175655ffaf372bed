"""The gateway: the WhatsApp edge, both ways (webhooks in, Graph API calls out)."""
