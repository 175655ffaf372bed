"""What the gateway and the sandbox share about WhatsApp: webhook payloads and signatures."""
