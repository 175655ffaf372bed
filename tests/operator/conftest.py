"""The operator tests share `cluster`: kopf running against kmock's emulated API and a real nats-server."""

from tests.operator.test_operator_kmock import cluster

__all__ = ["cluster"]
