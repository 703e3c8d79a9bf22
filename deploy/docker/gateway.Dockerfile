# syntax=docker/dockerfile:1
# The gateway: slim, non-root, read-only friendly. Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t recsys-gateway .
# It needs TRITON_URL, QDRANT_URL and REDIS_URL (it starts no backend of its own).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY requirements.lock pyproject.toml ./
# Only the serving dependencies (pyproject's project.dependencies), at requirements.lock's versions.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > runtime-requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -c requirements.lock -r runtime-requirements.txt \
    && pip install --no-cache-dir -c requirements.lock grpcio-tools
COPY protos protos
COPY stack/__init__.py stack/protos.py stack/
# The same generator and command as `make protos`.
RUN python -m stack.protos --out gateway/api

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin recsys
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY gateway gateway
COPY --from=build /src/gateway/api gateway/api
COPY ranker ranker
COPY model_export/__init__.py model_export/triton_config.py model_export/
COPY stack/__init__.py stack/net.py stack/redis.py stack/run.py stack/triton.py stack/
COPY webui webui
COPY deploy/docker/healthcheck.py healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/tmp/recsys \
    DEMO_CATALOG_SIZE=0
USER 10001
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "localhost:50051"]
CMD ["python", "-m", "stack.run", "serve"]
