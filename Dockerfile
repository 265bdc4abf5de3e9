# ext-authz: the gRPC ext_authz service (9191) and its HTTP port (9300: /healthz,
# /readyz, /metrics). Mount a config at /etc/ext-authz/config.yaml (see docs/deploy.md).
#
#   docker build -t ext-authz .
#   docker run -v $PWD/config.yaml:/etc/ext-authz/config.yaml:ro \
#     -e EXT_AUTHZ_SECRET=... -p 9191:9191 -p 9300:9300 ext-authz
#
# The config must listen on 0.0.0.0 (server.listen / server.http_listen), not on the
# defaults' 127.0.0.1, or nothing outside the container reaches it.
#
# As an authentik outpost (deploy/authentik/README.md) no config file is needed:
#   docker run -e AUTHENTIK_HOST=https://authentik.example.com/ -e AUTHENTIK_TOKEN=... \
#     -e EXT_AUTHZ_STORE_URL=redis://redis:6379/0 -p 9191:9191 -p 9400:9400 ext-authz serve
# The EXT_AUTHZ_*_LISTEN variables below serve that environment-only start (a config
# file's own server section wins over them).

# --- build: install the package and its runtime dependencies into a venv ----------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/ext-authz
WORKDIR /src
# Only what `pip install .` needs; the generated protobuf stubs live in ext_authz/_proto.
COPY pyproject.toml ./
COPY ext_authz ./ext_authz
# Runtime dependencies only (no [dev] extra): no Envoy, no test tools.
RUN /opt/ext-authz/bin/pip install .

# --- runtime -----------------------------------------------------------------------------
FROM python:3.11-slim
ENV PATH=/opt/ext-authz/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EXT_AUTHZ_LISTEN=0.0.0.0:9191 \
    EXT_AUTHZ_HTTP_LISTEN=0.0.0.0:9300 \
    EXT_AUTHZ_FORWARD_AUTH_LISTEN=0.0.0.0:9400
RUN groupadd --system --gid 10001 ext-authz \
 && useradd --system --uid 10001 --gid ext-authz --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin ext-authz \
 && mkdir -p /etc/ext-authz
COPY --from=build /opt/ext-authz /opt/ext-authz
# A numeric user, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 9191 9300 9400
# Liveness only (/healthz): /readyz also needs Redis and the IdP, and an unhealthy
# container is not what a store outage should produce. No curl in slim images: Python.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9300/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["ext-authz"]
CMD ["serve", "-c", "/etc/ext-authz/config.yaml"]
