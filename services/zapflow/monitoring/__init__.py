"""zapflow's monitoring as code: Grafana dashboards, Prometheus rules, and pictures of the dashboards for the docs.

A developer's tool (it needs the dev dependencies): `python -m zapflow.monitoring --write` writes the files
the Helm chart ships (charts/zapflow/files/) and the pictures in docs/dashboards/. Importing the package
itself loads nothing, so that tools which walk zapflow's packages do not pay for it.
"""
