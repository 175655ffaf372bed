"""The handoff service: conversations with a person, the agents\x27 queue and inbox (docs/handoff.md)."""
