"""The WSGI entry point gunicorn loads in each worker: ``gunicorn serving.wsgi:app``."""

from __future__ import annotations

import logging

from serving.app import create_app

logging.basicConfig(level=logging.INFO,
                    format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
app = create_app()
