"""The online forecast API: a Flask app, run by gunicorn (``serving/gunicorn_conf.py``).

``create_app()`` loads the project (params.yaml) into a :class:`~serving.state.ServingState`
(the champion, the latest batch forecasts, the recent history; a reload thread keeps them
current) and assembles the blueprints: ``/v1`` (``serving/api.py``), health and readiness
(``serving/service.py``), the API document (``serving/docs.py``), ``/metrics``
(``serving/metrics.py``) and the problem documents every error becomes
(``serving/problems.py``). See docs/serving.md.
"""

from __future__ import annotations

from flask import Flask

from pipeline.context import Context
from pipeline.settings import ServingSettings
from serving import api, docs, metrics, problems, service
from serving.state import ServingState


def create_app(ctx: Context | None = None, settings: ServingSettings | None = None,
               start: bool = True) -> Flask:
    ctx = ctx or Context.load()
    settings = settings or ServingSettings.from_env()
    state = ServingState(ctx, settings)
    app = Flask("serving")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["aq_serving"] = state
    for blueprint in (metrics.blueprint(app), problems.blueprint, service.blueprint,
                      docs.blueprint, api.blueprint):
        app.register_blueprint(blueprint)
    if start:
        state.start()
    return app
