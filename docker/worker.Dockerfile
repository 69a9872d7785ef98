# syntax=docker/dockerfile:1.7
# QSAE Fleet worker image: the dispatcher (`qsae-fleet worker`) and the Ray head and workers
# (`ray start ...`, also what KubeRay runs). torch's CPU build, pinned to 2.13.0, from the PyTorch
# CPU index (`pip install .[server,workers]`; the default index would pull a multi-GB CUDA build).
# Build from the repository root (BuildKit reads docker/worker.Dockerfile.dockerignore):
#   docker build -f docker/worker.Dockerfile -t qsae-fleet/worker:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install pip==26.0.1
# torch alone from the CPU index (no deps: they come from PyPI below, at the constrained versions).
RUN pip install --no-deps --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
# The allow-list in docker/worker.Dockerfile.dockerignore keeps this to the packages and pyproject.
COPY . .
RUN pip install --constraint docker/constraints.txt ".[server,workers]" \
 && python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__; \
assert not torch.version.cuda, 'CUDA build of torch pulled in'" \
 && qsae-fleet --help >/dev/null && ray --version

FROM ${PYTHON_IMAGE} AS runtime
# wget: KubeRay's default probes on Ray pods call it. dataset-fashion-mnist: the benchmark data
# (FLEET_DATA_DIR), from Debian like everywhere else in the project.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      wget=1.21.3-1+deb12u1 \
      dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 qsae \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/qsae --create-home \
      --shell /bin/bash qsae \
 && install -d -o 10001 -g 10001 /var/lib/qsae/artifacts
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    FLEET_STATE_DIR=/var/lib/qsae \
    FLEET_DATA_DIR=/usr/share/datasets/fashion-mnist
USER 10001:10001
WORKDIR /var/lib/qsae
# 6379 GCS, 8265 dashboard, 10001 Ray client (head only).
EXPOSE 6379 8265 10001
CMD ["qsae-fleet", "worker"]
