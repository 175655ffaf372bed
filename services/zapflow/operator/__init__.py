"""The kopf operator of BotTenant custom resources (docs/operator.md)."""
