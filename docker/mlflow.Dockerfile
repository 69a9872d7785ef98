# syntax=docker/dockerfile:1.7
# MLflow tracking + registry server for QSAE Fleet, with a PostgreSQL backend store (psycopg 3)
# and a proxied artifact store (`--serve-artifacts`), same mlflow pin as the workers' client.
# Build from the repository root (BuildKit reads docker/mlflow.Dockerfile.dockerignore):
#   docker build -f docker/mlflow.Dockerfile -t qsae-fleet/mlflow:3.17.2 .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install pip==26.0.1
COPY docker/constraints.txt /tmp/constraints.txt
RUN pip install --constraint /tmp/constraints.txt mlflow==3.17.2 "psycopg[binary]==3.3.9" \
 && mlflow --version

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 mlflow \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/mlflow --create-home \
      --shell /usr/sbin/nologin mlflow \
 && install -d -o 10001 -g 10001 /var/lib/mlflow/artifacts
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    MLFLOW_BACKEND_STORE_URI=sqlite:////var/lib/mlflow/mlflow.db
USER 10001:10001
WORKDIR /var/lib/mlflow
EXPOSE 5000
# The backend store comes from MLFLOW_BACKEND_STORE_URI (a secret in compose and the chart: kept
# off the command line).
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--workers", "1", \
     "--artifacts-destination", "/var/lib/mlflow/artifacts", "--serve-artifacts"]
