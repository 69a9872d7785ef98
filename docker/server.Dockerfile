# syntax=docker/dockerfile:1.7
# QSAE Fleet control-plane image: `qsae-fleet serve` (default), `qsae-fleet db upgrade`,
# `qsae-fleet controller`. No torch, no Ray (`pip install .[server]`).
# Build from the repository root (BuildKit reads docker/server.Dockerfile.dockerignore):
#   docker build -f docker/server.Dockerfile -t qsae-fleet/server:0.1.0 .
# The base is pinned by tag; pin it by digest as well in your registry mirror
# (`docker buildx imagetools inspect python:3.11.13-slim-bookworm`), see docs/deploy.md.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install pip==26.0.1
WORKDIR /src
# The allow-list in docker/server.Dockerfile.dockerignore keeps this to the packages and pyproject.
COPY . .
RUN pip install --constraint docker/constraints.txt ".[server]" \
 && qsae-fleet --help >/dev/null

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 qsae \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/qsae --create-home \
      --shell /usr/sbin/nologin qsae \
 && install -d -o 10001 -g 10001 /var/lib/qsae/artifacts
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLEET_STATE_DIR=/var/lib/qsae \
    FLEET_HOST=0.0.0.0 \
    FLEET_PORT=8000
USER 10001:10001
WORKDIR /var/lib/qsae
EXPOSE 8000
CMD ["qsae-fleet", "serve"]
