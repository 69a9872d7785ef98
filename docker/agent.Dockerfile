# syntax=docker/dockerfile:1.7
# QSAE Fleet edge-agent image: `qsae-agent run` (default) and the fleet simulator
# (`qsae-fleet simulate ...`). No torch, no server stack (`pip install .[agent]`).
# Build from the repository root (BuildKit reads docker/agent.Dockerfile.dockerignore):
#   docker build -f docker/agent.Dockerfile -t qsae-fleet/agent:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install pip==26.0.1
WORKDIR /src
# The allow-list in docker/agent.Dockerfile.dockerignore keeps this to the packages and pyproject.
COPY . .
RUN pip install --constraint docker/constraints.txt ".[agent]" \
 && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch in the agent image'" \
 && qsae-agent --help >/dev/null

FROM ${PYTHON_IMAGE} AS runtime
# dataset-fashion-mnist: the simulator draws device streams from it (FLEET_DATA_DIR).
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 qsae \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/qsae --create-home \
      --shell /usr/sbin/nologin qsae
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    QSAE_AGENT_STATE_DIR=/var/lib/qsae/agent \
    FLEET_DATA_DIR=/usr/share/datasets/fashion-mnist
USER 10001:10001
WORKDIR /var/lib/qsae
CMD ["qsae-agent", "run"]
