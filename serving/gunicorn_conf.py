"""gunicorn settings of the serving app: ``gunicorn -c serving/gunicorn_conf.py serving.wsgi:app``.

- binds 127.0.0.1 on ``AQ_SERVING_PORT`` (default 8000, ``pipeline.settings.Ports``) when run
  by hand; ``make run`` and docker-compose pass ``--bind unix:.stack/serving/app.sock``: nginx
  (``serving/proxy.py``) holds the public port, and a unix socket's directory is created
  mode 0700 so nothing else reaches the workers;
- ``AQ_SERVING_WORKERS`` sync workers (default 2), each loading the champion itself;
- ``OMP_NUM_THREADS=1``: a worker serves one request at a time, and scikit-learn's OpenMP
  threads (the fallback path) would otherwise spin against the other workers;
- prometheus_client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory
  under the system temp dir unless set) is emptied when the master starts, and each dead
  worker's live gauges are dropped (``child_exit``), so /metrics counts are exact across
  workers and restarts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pipeline.settings import Ports, ServingSettings

_settings = ServingSettings.from_env()
_ports = Ports.from_env()

bind = [_ports.address("serving")]
workers = _settings.workers
worker_class = "sync"
timeout = int(_settings.timeout_s)
graceful_timeout = 20
# gunicorn >= 25 opens a control socket under ~/.gunicorn; several instances would share it
control_socket_disable = True

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
if not _settings.prometheus_multiproc_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="aq-serving-metrics-")


def on_starting(server) -> None:
    """A fresh metrics directory for every start (stale files would add old counts); the
    directory of a unix socket, private to this user, before gunicorn binds it."""
    directory = Path(ServingSettings.from_env().prometheus_multiproc_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    for address in server.cfg.bind:
        if address.startswith("unix:"):
            folder = Path(address[len("unix:"):]).parent
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)


def child_exit(server, worker) -> None:
    from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
