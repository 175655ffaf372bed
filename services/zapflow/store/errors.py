"""The one error the store raises for conditions a person must fix (a bad URL, an unreachable server)."""


class StoreError(Exception):
    """A message fit to show as is: it names the problem and never contains a password."""
