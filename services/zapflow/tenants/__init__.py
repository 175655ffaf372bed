"""Tenants: the BotTenant model, its secrets, loading from files, the CRD schema and the live registry."""
