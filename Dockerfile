# Production image for agent-gateway: `serve` (default), `consume`, `migrate`, `admin ...`.
# Builder and runtime must share one base image: the venv's python symlinks into it.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv

# Runtime dependencies only (no [dev] extra, no dev kit), read from pyproject.toml and installed
# before the source is copied, so code edits reuse this layer.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt

COPY gateway ./gateway
COPY adapters ./adapters
COPY store ./store
# --no-deps: dependencies are already in; `pip check` fails the build if the two lists drift.
# `--help` imports the whole CLI, proving the runtime needs no extra.
RUN /opt/venv/bin/pip wheel --no-deps -w /wheels . \
 && /opt/venv/bin/pip install --no-deps /wheels/*.whl \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/agent-gateway --help > /dev/null


FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin gateway
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
# Numeric so Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# 8080: the gateway (serve). 8081: the store consumer's /metrics and /healthz (consume).
EXPOSE 8080 8081
# Both drain on SIGTERM: the gateway as README "Operations" describes, the consumer after the
# batch in hand.
STOPSIGNAL SIGTERM
# Only meaningful for `serve`; compose disables it for consume/migrate, Kubernetes ignores it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GATEWAY_PORT', '8080') + '/healthz', timeout=4)"]
ENTRYPOINT ["agent-gateway"]
CMD ["serve"]
