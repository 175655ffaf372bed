# syntax=docker/dockerfile:1
# One image for every zapflow workload; the command picks which (`zapflow gateway --role webhook`,
# `zapflow conversation --port 8080`, `zapflow db upgrade`...). docs/deployment.md explains it.
#   docker build -t zapflow:0.1.0 .

# The same exact Python release in both stages: the virtual environment built in the first links
# to this interpreter. Pin its digest too when releasing (python:3.11.14-slim-bookworm@sha256:...):
# it could not be looked up where this file was written, a machine that reaches no registry.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# The uv that scripts/bootstrap installs, from PyPI.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
# Bytecode compiled now, since the running container cannot write it; copies instead of links,
# since the cache is a mount that the final stage does not get.
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /src
# The locked dependencies in a layer of their own, so that a code change does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --no-install-project
COPY services ./services
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="zapflow" \
      org.opencontainers.image.description="Multi-tenant WhatsApp Cloud API bot platform, Kubernetes-native" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# A numeric user, so that Kubernetes' runAsNonRoot can check it, and the one directory it may write
# besides /tmp (relative data paths such as .zapflow/ land there). The base image may ship the
# standard library without bytecode: compiled here, once, rather than at every start.
RUN groupadd --system --gid 10001 zapflow \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin zapflow \
 && install --directory --owner=10001 --group=10001 --mode=0750 /var/lib/zapflow \
 && python -m compileall -q /usr/local/lib/python3.11

COPY --from=builder /opt/venv /opt/venv

# Read-only root: nothing is written outside /tmp and /var/lib/zapflow (mount both).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
WORKDIR /var/lib/zapflow
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["zapflow"]
CMD ["gateway", "--port", "8080"]
