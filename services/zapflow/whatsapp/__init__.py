"""What zapflow knows about WhatsApp's formats: webhook payloads, signatures and messages."""
