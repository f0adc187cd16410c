#!/usr/bin/env bash
# Install everything the project needs: Debian packages when missing, then the venv.
# Idempotent; `make` calls it whenever pyproject.toml is newer than the venv stamp.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
DEBIAN_PACKAGES=(prometheus prometheus-pushgateway prometheus-alertmanager prometheus-node-exporter
  chromium)  # chromium: the browser checks of the UIs (Playwright drives it, nothing downloaded)
BINARIES=(prometheus promtool prometheus-pushgateway prometheus-alertmanager amtool prometheus-node-exporter
  chromium)

apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "setup: apt-get not found; install these yourself: $*" >&2
    return 1
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
for bin in "${BINARIES[@]}"; do command -v "$bin" >/dev/null || missing+=("$bin"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: missing binaries: ${missing[*]}"
  apt_install "${DEBIAN_PACKAGES[@]}"
fi
# the browser the UI tests drive with Playwright (never `playwright install`: nothing downloads)
if ! command -v chromium >/dev/null; then
  apt_install chromium
fi
# Installing the packages starts no daemon here; make sure none is left running on 0.0.0.0.
for svc in prometheus prometheus-pushgateway prometheus-alertmanager prometheus-node-exporter; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done
# nginx: the serving app's front door (a buffering reverse proxy before gunicorn, docs/serving.md),
# and mtail, which turns nginx's access log into Prometheus counters. The project runs its own
# nginx under .stack/ on 127.0.0.1 as the invoking user; the system instance Debian's package
# may start (port 80 on every address) is stopped again.
command -v mtail >/dev/null || apt_install mtail
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  apt_install nginx
  if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
    systemctl stop nginx || true
    systemctl disable nginx 2>/dev/null || true
  elif [ -f /run/nginx.pid ] && command -v service >/dev/null; then
    service nginx stop || true
  fi
fi
# PostgreSQL and Redis for the Airflow scale-out profile (AQ_AIRFLOW_PROFILE=celery, docs/airflow.md);
# Debian keeps PostgreSQL's binaries in /usr/lib/postgresql/<version>/bin, off PATH. The project
# runs its own instances under .stack/ on 127.0.0.1: a system instance this installation started
# is stopped again (one that was there before is left alone).
scaleout=()
command -v postgres >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null \
  || scaleout+=(postgresql)
command -v redis-server >/dev/null || scaleout+=(redis-server)
if [ ${#scaleout[@]} -gt 0 ]; then
  apt_install "${scaleout[@]}"
  for svc in "${scaleout[@]}"; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
      systemctl stop "$svc" || true
    fi
  done
fi

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    apt_install python3-venv
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
  fi
fi
# the installer is pinned too; everything else comes from requirements.lock (exact versions and
# sha256 hashes, `make lock` refreshes it), then the project itself without resolving anything
UV_VERSION=0.13.9
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
"$VENV/bin/python" -m uv pip install --python "$VENV/bin/python" --compile-bytecode --quiet \
  --require-hashes -r requirements.lock
"$VENV/bin/python" -m uv pip install --python "$VENV/bin/python" --quiet --no-deps -e .

# MLflow's tracking server and MLServer cannot share .venv with Airflow 3.3 (their pins:
# requirements-mlflow.in, requirements-mlserver.in): each runs from a venv of its own, made
# from its own hashed lock. MLServer's gets the project too (its custom runtime serves the
# champion), without Airflow.
side_venv() {  # side_venv DIR LOCK [project]
  local dir=$1 lock=$2
  if [ ! -x "$dir/bin/python" ]; then
    "$PYTHON" -m venv "$dir"
  fi
  "$VENV/bin/python" -m uv pip install --python "$dir/bin/python" --compile-bytecode --quiet \
    --require-hashes -r "$lock"
  if [ "${3:-}" = project ]; then
    "$VENV/bin/python" -m uv pip install --python "$dir/bin/python" --quiet --no-deps -e .
  fi
}
side_venv .venv-mlflow requirements-mlflow.lock
side_venv .venv-mlserver requirements-mlserver.lock project
# the KServe SDK's wheel (pinned, hash-checked, not installed: tests/deploy read the CRD models
# it was generated from to validate deploy/k8s/ offline)
"$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
  --require-hashes -r requirements-schemas.lock --only-binary :all: -d "$VENV/share/aq-schemas"
echo "setup: ready ($("$VENV/bin/python" --version), venv $VENV; .venv-mlflow, .venv-mlserver)"
