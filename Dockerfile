# syntax=docker/dockerfile:1
#
# wsgate container image.
#
#   docker build -t wsgate .
#   docker run -p 8443:8443 -v wsgate-state:/var/lib/wsgate wsgate
#
# Mount your own config at /etc/wsgate/wsgate.toml. Inside a container
# listen.address must be "0.0.0.0" (or "::"): a gateway bound to 127.0.0.1
# cannot be reached through a published port. Set WSGATE_DOMAIN to the
# config's `domain` so the health check asks for the right host.

# --- build: install wsgate and its dependencies into a virtual environment ----
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# A C compiler for the build only: the forwarding hot path is compiled with mypyc (setup.py).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/wsgate
ENV PATH=/opt/wsgate/bin:$PATH

WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY gateway/ gateway/
COPY auth/ auth/
COPY routing/ routing/
COPY certs/ certs/
COPY launcher/ launcher/
RUN pip install --upgrade pip \
 && pip install . \
 && wsgate version

# --- runtime ------------------------------------------------------------------
FROM python:3.11-slim

ENV PATH=/opt/wsgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WSGATE_DOMAIN=wsgate.localhost \
    WSGATE_PORT=8443

RUN groupadd --system --gid 10001 wsgate \
 && useradd --system --uid 10001 --gid wsgate --home-dir /var/lib/wsgate --no-create-home \
        --shell /usr/sbin/nologin wsgate \
 && mkdir -p /var/lib/wsgate /etc/wsgate \
 && chown wsgate:wsgate /var/lib/wsgate \
 && chmod 0700 /var/lib/wsgate

COPY --from=build /opt/wsgate /opt/wsgate

# A default config that works in a container: all interfaces, state in the
# volume, metrics reachable only if port 9464 is published. Replace it by
# mounting a file over /etc/wsgate/wsgate.toml.
RUN printf '%s\n' \
        'domain = "wsgate.localhost"' \
        'state_dir = "/var/lib/wsgate"' \
        '' \
        '[listen]' \
        'address = "0.0.0.0"' \
        'port = 8443' \
        '' \
        '[metrics]' \
        'address = "0.0.0.0"' \
        'port = 9464' \
        > /etc/wsgate/wsgate.toml \
 && wsgate config check /etc/wsgate/wsgate.toml

USER wsgate:wsgate
WORKDIR /var/lib/wsgate
VOLUME ["/var/lib/wsgate"]

EXPOSE 8443 9464

# GET /healthz on the main domain. No curl in the slim image, so Python does
# it; the certificate is not verified because the check connects to
# 127.0.0.1, not to a name on the certificate.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import http.client, os, ssl, sys; c = http.client.HTTPSConnection('127.0.0.1', int(os.environ.get('WSGATE_PORT', '8443')), timeout=4, context=ssl._create_unverified_context()); c.request('GET', '/healthz', headers={'Host': os.environ.get('WSGATE_DOMAIN', 'wsgate.localhost')}); sys.exit(0 if c.getresponse().status == 200 else 1)"]

# SIGTERM drains (in-flight requests get limits.shutdown_grace seconds), so
# give `docker stop` a longer timeout than that: docker stop -t 45.
STOPSIGNAL SIGTERM
ENTRYPOINT ["wsgate"]
CMD ["serve", "--config", "/etc/wsgate/wsgate.toml"]
