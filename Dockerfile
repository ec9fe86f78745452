# syntax=docker/dockerfile:1
# The rebootcoord agent and rebootctl.
#
#   podman build --isolation chroot --build-arg BASE_IMAGE=localhost/rebootcoord-base:bookworm .
#   docker build .
#
# BASE_IMAGE: any Debian-like image with python3 >= 3.11 and its venv module, CA certificates and
# util-linux's nsenter (the nsenter reboot method and command detectors enter the host's PID 1
# namespaces with it). The default is the official Python image, pinned by digest (resolve a new
# one with `docker buildx imagetools inspect python:3.11-slim-bookworm`); `make image` passes
# a base made locally from Debian packages instead (hack/image/build-base.sh).
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# ---------------------------------------------------------------------------------------------
# builder: wheels of the dependencies (cached while pyproject.toml is unchanged), then the wheel
# of rebootcoord itself, installed together into a virtualenv that the runtime stage copies.
# checkov:skip=CKV_DOCKER_7:the base is the BASE_IMAGE build argument, whose default is pinned by digest
FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python3 -m venv /opt/build
COPY pyproject.toml ./
# An optional build secret "ca" (a CA bundle) is trusted by pip, for builds behind a TLS-inspecting
# proxy: `--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt`. It never lands in a layer.
RUN --mount=type=secret,id=ca,required=false \
    --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    /opt/build/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >/src/requirements.txt; \
    /opt/build/bin/pip wheel --wheel-dir /wheels -r /src/requirements.txt
COPY README.md ./
COPY rebootcoord ./rebootcoord
RUN --mount=type=secret,id=ca,required=false \
    --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    /opt/build/bin/pip wheel --no-deps --wheel-dir /wheels . ; \
    python3 -m venv /opt/rebootcoord; \
    /opt/rebootcoord/bin/pip install --no-index --find-links /wheels rebootcoord; \
    # The kubernetes client ships an asyncio twin of itself (kubernetes.aio, ~70 MB with its
    # bytecode) and depends on aiohttp for it alone; the agent is synchronous and uses neither.
    rm -rf /opt/rebootcoord/lib/python3*/site-packages/kubernetes/aio; \
    /opt/rebootcoord/bin/pip uninstall --yes aiohttp aiohttp-retry aiosignal aiohappyeyeballs \
        frozenlist multidict yarl propcache pip setuptools; \
    rm -f /opt/rebootcoord/bin/activate* /opt/rebootcoord/bin/Activate.ps1

# ---------------------------------------------------------------------------------------------
# runtime: the base plus the virtualenv; no compiler, no pip, no build files.
FROM ${BASE_IMAGE} AS runtime
COPY --from=builder /opt/rebootcoord /opt/rebootcoord
ENV PATH=/opt/rebootcoord/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Non-root by default. The Helm chart runs the agent as uid 0 only where its reboot method needs
# it (nsenter: privileged; signal: CAP_KILL alone).
USER 65532:65532
WORKDIR /
ENTRYPOINT ["rebootcoord"]
CMD ["agent", "--config", "/etc/rebootcoord/config.yaml"]

# ---------------------------------------------------------------------------------------------
# smoke: the runtime image starts, as its own non-root user, and has what the chart relies on.
FROM runtime AS smoke
RUN set -eu; \
    rebootcoord --version | tee /tmp/smoke; \
    rebootctl --help >/dev/null; \
    python3 -c 'import etcd3, kubernetes.client, kubernetes.config, kubernetes.watch, prometheus_client, tenacity, yaml, zoneinfo, rebootcoord.cli.main, rebootcoord.cli.rebootctl; zoneinfo.ZoneInfo("Europe/Berlin")'; \
    nsenter --version >/dev/null; \
    test "$(id -u)" = 65532; \
    echo "smoke: ok" | tee -a /tmp/smoke

# ---------------------------------------------------------------------------------------------
# checkov:skip=CKV_DOCKER_2:Kubernetes ignores image HEALTHCHECKs (the chart probes /healthz) and rebootctl runs in this image too
# The default target: runtime, plus the smoke stage's result, so that no builder (BuildKit skips
# stages nothing depends on) can produce the image without running the smoke test.
FROM runtime AS final
COPY --from=smoke /tmp/smoke /usr/share/rebootcoord/smoke-test.txt
LABEL org.opencontainers.image.title="rebootcoord" \
      org.opencontainers.image.description="Cluster reboot coordinator: agent and rebootctl" \
      org.opencontainers.image.licenses="Apache-2.0"
