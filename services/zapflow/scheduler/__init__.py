"""The scheduler: durable timers for closing sessions, archiving them and enforcing retention."""
