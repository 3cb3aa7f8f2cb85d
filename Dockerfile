# syntax=docker/dockerfile:1
# The ingestor image: `qryptify` on Python 3.11, every dependency pinned by requirements.lock,
# running as an unprivileged user. Build: docker build -t qryptify-ingestor .
# Run:   docker run --rm -e QRYPTIFY_DATABASE_URL=postgresql://… qryptify-ingestor
# (docker compose up -d starts it next to TimescaleDB; see docker-compose.yml.)

# ---- build: install the package and its pinned dependencies into a venv ----------------------
FROM python:3.11.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv

# Dependencies first (a layer that survives source edits), pinned by the lock file: used as
# constraints, so only what the package needs is installed, at exactly the locked versions.
COPY requirements.lock pyproject.toml README.md ./
COPY src ./src
RUN /opt/venv/bin/pip install --no-cache-dir --constraint requirements.lock . \
    && /opt/venv/bin/pip check

# ---- runtime -----------------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm

LABEL org.opencontainers.image.title="qryptify-ingestor" \
      org.opencontainers.image.description="Binance USDⓈ-M klines into TimescaleDB/PostgreSQL"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A fixed uid/gid so volume permissions are predictable; no login shell, no home to write.
RUN groupadd --system --gid 10001 qryptify \
    && useradd --system --uid 10001 --gid qryptify --no-create-home \
       --home-dir /app --shell /usr/sbin/nologin qryptify

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY config.yaml /app/config.yaml

USER qryptify:qryptify

# Prometheus /metrics, /health, /ready (metrics.port in the config, 9108 by default).
EXPOSE 9108

# Liveness from inside the container (the slim image has no curl; Python's urllib does).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/health', timeout=4).status == 200 else 1)"]

# SIGTERM (docker stop) makes `qryptify run` finish the write in flight and exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["qryptify"]
CMD ["run", "--config", "/app/config.yaml"]
