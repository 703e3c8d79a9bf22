# syntax=docker/dockerfile:1
# The gateway: the installed package (gateway, ranker, the generated API, the client) and nothing else; slim,
# non-root, read-only friendly. Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t recsys-gateway .
# It needs TRITON_URL, QDRANT_URL and REDIS_URL (it starts no backend of its own); docs/configuration.md.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY gateway gateway
COPY ranker ranker
COPY recsys_api recsys_api
COPY recsys_client recsys_client
# The package with its serving dependencies (pyproject's project.dependencies) at requirements.lock's versions.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -c requirements.lock .

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin recsys
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY deploy/docker/healthcheck.py healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/tmp/recsys \
    HEALTH_PORT=50052
USER 10001
# gRPC (TLS when TLS_CERT_FILE/TLS_KEY_FILE are set), plaintext health only, metrics.
EXPOSE 50051 50052 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "localhost:50052"]
CMD ["recsys-gateway"]
