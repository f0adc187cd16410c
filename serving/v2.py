"""The champion over the open V2 inference protocol: an MLServer custom runtime.

MLServer (KServe's and Seldon's model server) runs this class from ``.venv-mlserver`` (MLServer
1.7 pins FastAPI < 0.116, Airflow needs newer: docs/mlops.md), configured by
``deploy/mlserver/model-settings.json``. It serves what the Flask endpoint serves, the same way:

* the champion comes through the project's registry (:class:`~serving.state.ServingState`:
  sha256, trusted types, Treelite compiled and verified against scikit-learn), never from
  MLflow or a pickle, and is hot-swapped when ``models/champion.json`` changes (the state's
  reload thread; a request reads the model once);
* a request is answered by :func:`serving.ondemand.answer`, the function behind
  ``POST /v1/forecasts`` (the forecast path of ``pipeline/forecaster.py`` with the compiled
  trees): the same inputs give the same forecasts.

Request (``POST /v2/models/aq-forecast/infer``)::

    {"inputs": [{"name": "location_id", "shape": [1], "datatype": "BYTES", "data": ["berlin"]},
                {"name": "observations", "shape": [1], "datatype": "BYTES",
                 "data": ["[{\\"time\\": \\"2025-12-31T23:00:00Z\\", \\"pm2_5\\": 12.5}]"]}]}

``observations`` (optional) is the JSON array ``POST /v1/forecasts`` takes. The answer has one
row per target x horizon as columns, the items of ``/v1`` (``pipeline.forecaster.ITEM_COLUMNS``:
target, horizon, target_time, value, the 80 % interval, AQI and category, the probabilities of
reaching each category, hours since observation; a number that is null in ``/v1`` is NaN
here), ``model_version`` the champion's version, and ``parameters`` the location, issue time,
observations used and input completeness. Refusals are MLServer errors with the status the
Flask endpoint gives (400, 404, 422, 503) and its detail.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from mlserver import MLModel, types
from mlserver.codecs import StringCodec
from mlserver.errors import MLServerError
from pydantic import ValidationError

from pipeline.context import Context
from pipeline.forecaster import ITEM_COLUMNS
from pipeline.settings import ServingSettings
from serving.errors import ApiError, validation_problem
from serving.ondemand import answer
from serving.schemas import ForecastRequest
from serving.state import ServingState

log = logging.getLogger(__name__)

PLATFORM = "aq-forecast"
INPUTS = ("location_id", "observations")
MAX_OBSERVATIONS_BYTES = 64 * 1024  # as AQ_SERVING_MAX_BODY_BYTES' default
INPUT_METADATA = [
    types.MetadataTensor(name="location_id", datatype="BYTES", shape=[1]),
    types.MetadataTensor(name="observations", datatype="BYTES", shape=[1],
                         parameters=types.Parameters(content_type="str")),
]
TEXT_COLUMNS = ("target", "target_time", "aqi_category")
INT_COLUMNS = ("horizon",)


def datatype(column: str) -> str:
    return "BYTES" if column in TEXT_COLUMNS else "INT32" if column in INT_COLUMNS else "FP64"


OUTPUT_METADATA = [types.MetadataTensor(name=c, datatype=datatype(c), shape=[-1])
                   for c in ITEM_COLUMNS]


class ChampionRuntime(MLModel):
    """The project's champion as an MLServer model; ready while a verified champion is loaded."""

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self._state: ServingState | None = None

    # readiness: MLServer sets ``ready`` from load(); the champion decides it from then on

    @property
    def ready(self) -> bool:
        return bool(self._loaded and self._state is not None and self._state.model is not None)

    @ready.setter
    def ready(self, value: bool) -> None:
        self._loaded = bool(value)

    async def load(self) -> bool:
        self._state = ServingState(Context.load(), ServingSettings.from_env())
        # the first load (registry, Treelite compile, verification) takes seconds: off the loop
        await asyncio.get_running_loop().run_in_executor(None, self._state.start)
        if self._state.model is None:
            log.warning("no champion served yet: %s (ready once one is)", self._state.not_ready)
        return True

    async def unload(self) -> bool:
        if self._state is not None:
            self._state.stop()
        return True

    async def metadata(self) -> types.MetadataModelResponse:
        model = self._state.model if self._state else None
        return types.MetadataModelResponse(
            name=self.name, platform=PLATFORM,
            versions=[model.version] if model else [],
            inputs=INPUT_METADATA, outputs=OUTPUT_METADATA,
            parameters=types.Parameters(
                targets=json.dumps(model.targets if model else []),
                horizons=json.dumps(model.horizons if model else []),
                engines=json.dumps(model.engines if model else {}),
                locations=json.dumps(sorted(self._state.locations) if self._state else [])))

    async def predict(self, payload: types.InferenceRequest) -> types.InferenceResponse:
        req = self._request(payload)
        try:
            body = answer(self._state, req)
        except ApiError as exc:
            raise MLServerError(f"{exc.title}: {exc.detail}", exc.status) from None
        return response(self.name, body)

    def _request(self, payload: types.InferenceRequest) -> ForecastRequest:
        """The V2 inputs as the request ``POST /v1/forecasts`` validates (same errors)."""
        given = {i.name: i for i in payload.inputs}
        unknown = sorted(set(given) - set(INPUTS))
        if unknown:
            raise MLServerError(f"unknown input(s) {unknown[:5]}: this model takes "
                                f"{list(INPUTS)}", 422)
        if "location_id" not in given:
            raise MLServerError("input location_id is required (BYTES, shape [1])", 422)
        body: dict[str, Any] = {"location_id": _one_string(given["location_id"])}
        if "observations" in given:
            text = _one_string(given["observations"])
            if len(text.encode()) > MAX_OBSERVATIONS_BYTES:
                raise MLServerError(f"input observations is larger than "
                                    f"{MAX_OBSERVATIONS_BYTES} bytes", 413)
            try:
                body["observations"] = json.loads(text)
            except ValueError as exc:
                raise MLServerError(f"input observations is not JSON: {exc}", 400) from None
        try:  # as the Flask endpoint validates its body: from JSON (strict types)
            return ForecastRequest.model_validate_json(json.dumps(body))
        except ValidationError as exc:
            problem = validation_problem(exc)  # the Flask endpoint's refusal, word for word
            raise MLServerError(f"{problem.title}: {problem.detail}", problem.status) from None


def _one_string(tensor: types.RequestInput) -> str:
    if tensor.datatype != "BYTES":
        raise MLServerError(f"input {tensor.name} must be BYTES, not {tensor.datatype}", 422)
    values = StringCodec.decode_input(tensor)
    if len(values) != 1:
        raise MLServerError(f"input {tensor.name} must hold one value, not {len(values)}", 422)
    return str(values[0])


def response(name: str, body: dict[str, Any]) -> types.InferenceResponse:
    """The on-demand answer as V2 columns (one row per target x horizon)."""
    items = body["forecasts"]

    def column(key: str) -> types.ResponseOutput:
        kind = datatype(key)
        convert = str if kind == "BYTES" else int if kind == "INT32" else _number
        data = [convert(i[key]) for i in items]
        return types.ResponseOutput(name=key, shape=[len(data)], datatype=kind, data=data)

    completeness = body["completeness"]
    return types.InferenceResponse(
        model_name=name, model_version=body["model_version"],
        parameters=types.Parameters(
            location_id=body["location_id"], issue_time=body["issue_time"],
            observations_used=body["observations_used"],
            features_present=completeness["features_present"],
            hours_since_observation=json.dumps(completeness["hours_since_observation"])),
        outputs=[column(c) for c in ITEM_COLUMNS])


def _number(value: Any) -> float:
    """A JSON null of ``/v1`` (an unknown number) is NaN in a V2 FP64 tensor."""
    return float("nan") if value is None else float(value)
