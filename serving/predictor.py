"""The champion's models as fast predictors: Treelite where it is exact, scikit-learn otherwise.

scikit-learn's ``Pipeline.predict`` on one row costs about 1 ms per model (DataFrame checks,
column selection, OpenMP); the same trees evaluated by Treelite's GTIL take ~30 us. A model
is compiled only when it has the structure the project trains (``pipeline/core/models.py``):

    Pipeline([("select", ColumnTransformer([(name, "passthrough", columns)], remainder="drop")),
              ("model", LogResidualRegressor(HistGradientBoostingRegressor(identity link)))])

or the same with ``TargetFormRegressor`` (``log_level``, ``level`` or ``change`` form) as the
final step: the trees give the value in model space, and the wrapper's inverse transform is
applied here term for term (:meth:`Predictor._finish`).

and only if, on verification rows, its predictions equal ``Pipeline.predict`` within
:data:`TOLERANCE` (plus :data:`RELATIVE_TOLERANCE` of the value). Anything else (another
estimator, another loss, a wrapper issue 12 may add, a Treelite error or a mismatch) is served
by the Pipeline itself, and says so (:attr:`Predictor.engine` and the reason).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.keys import ModelKey, nest
from pipeline.core.models import inverse_target
from pipeline.forecaster import Champion

log = logging.getLogger(__name__)

TOLERANCE = 1e-9  # served prediction vs Pipeline.predict, in the target's unit (ug/m3)
# plus this share of the value: the trees' sums agree to ~4e-15 in log space, so a forecast of
# 1e6 (verification rows go far beyond real data) may differ by ~1e-9 for rounding alone
RELATIVE_TOLERANCE = 1e-12
TREELITE = "treelite"
SKLEARN = "sklearn"


class NotCompilable(Exception):
    """The Pipeline is not the structure the fast path knows."""


@dataclass
class Predictor:
    """One target x horizon: ``predict(rows)`` takes rows in the order of ``columns``."""

    target: str
    horizon: int
    columns: list[str]
    pipeline: Any
    engine: str = SKLEARN
    reason: str = ""
    _tree: Any = None
    _anchor: int = -1
    _fallback: float = float("nan")
    _gtil: Any = None
    _form: str = "log_change"  # the wrapper's target form (pipeline.core.models.FORMS)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        if self.engine == TREELITE:
            return self._predict_treelite(rows)
        return self.predict_sklearn(rows)

    def predict_sklearn(self, rows: np.ndarray) -> np.ndarray:
        frame = pd.DataFrame(np.atleast_2d(rows), columns=self.columns)
        return np.asarray(self.pipeline.predict(frame), dtype=np.float64)

    def _predict_treelite(self, rows: np.ndarray) -> np.ndarray:
        rows = np.atleast_2d(rows)
        return self._finish(rows, self._gtil(rows))

    def _finish(self, rows: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """The wrapper's ``predict`` after its trees: the one inverse transform."""
        return inverse_target(self._form, raw, rows[:, self._anchor] if self._anchor >= 0
                              else None, self._fallback)


# Treelite minor versions whose private C entry points (``treelite.core._LIB``'s
# TreeliteGTILGetOutputShape / TreeliteGTILPredict, ``_check_call``, ``GTILConfig``) the fast
# call was written and verified against: tests/test_private_apis.py fails on any other
# installed version; a run then uses the public ``treelite.gtil.predict``.
TREELITE_FAST_CALL_VERSIONS = ("4.8",)


def treelite_fast_call_verified(version: str) -> bool:
    return ".".join(version.split(".")[:2]) in TREELITE_FAST_CALL_VERSIONS


class Gtil:
    """Treelite's GTIL predict for float64 rows, one thread, without per-call set-up.

    ``treelite.gtil.predict`` parses a JSON config and checks its arguments on every call
    (~20 us of a ~30 us one-row call); this keeps the config and calls the same C function
    (``TreeliteGTILPredict``) through Treelite's private ctypes handle, on the Treelite versions
    it was verified against only. Anything else, or whatever fails here, uses the public
    ``treelite.gtil.predict``.

    ``per_tree``: each tree's output ("score_per_tree", ``treelite.gtil.predict_per_tree``),
    (rows, trees) instead of (rows,).
    """

    def __init__(self, model: Any, per_tree: bool = False) -> None:
        import ctypes

        import treelite
        import treelite.gtil

        self._model = model
        self._slow = treelite.gtil.predict_per_tree if per_tree else treelite.gtil.predict
        self._per_tree, self._width = per_tree, int(model.num_tree) if per_tree else 1
        self._fast = False
        self.reason = ""
        try:
            if not treelite_fast_call_verified(treelite.__version__):
                raise RuntimeError(f"treelite {treelite.__version__} is not a version the fast "
                                   f"call was verified on {TREELITE_FAST_CALL_VERSIONS}")
            from treelite.core import _LIB, _check_call
            from treelite.gtil.gtil import GTILConfig

            if (model.input_type, model.output_type) != ("float64", "float64"):
                raise TypeError(f"{model.input_type} inputs, {model.output_type} outputs")
            self._config = GTILConfig(
                predict_type="score_per_tree" if per_tree else "default", nthread=1)
            shape = ctypes.POINTER(ctypes.c_uint64)()
            ndim = ctypes.c_uint64()
            _check_call(_LIB.TreeliteGTILGetOutputShape(
                model.handle, ctypes.c_uint64(1), self._config.handle,
                ctypes.byref(shape), ctypes.byref(ndim)))
            if tuple(shape[i] for i in range(ndim.value)) != (1, self._width, 1):
                raise TypeError("not a single-output regressor")
            self._num_feature = int(model.num_feature)
            self._call, self._check = _LIB.TreeliteGTILPredict, _check_call
            self._pointer, self._rows = ctypes.c_void_p, ctypes.c_uint64
            self._handles = (model.handle, self._config.handle)
            self._fast = True
        except Exception as exc:
            self.reason = str(exc)
            log.info("treelite fast call unavailable (%s): using treelite.gtil's", exc)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        shape = (rows.shape[0], self._width) if self._per_tree else (rows.shape[0],)
        if not self._fast or rows.shape[1] != self._num_feature:
            return self._slow(self._model, rows, nthread=1).reshape(shape)
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        out = np.empty(shape, dtype=np.float64)
        model, config = self._handles
        self._check(self._call(model, self._pointer(rows.ctypes.data), b"float64",
                               self._rows(rows.shape[0]), self._pointer(out.ctypes.data),
                               config))
        return out


def _structure(pipeline: Any) -> tuple[list[str], Any, Any, str]:
    """(selected columns, the wrapper, its fitted HGB, its form) or NotCompilable."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline

    from pipeline.core.models import LogResidualRegressor, TargetFormRegressor

    if type(pipeline) is not Pipeline or len(pipeline.steps) != 2:
        raise NotCompilable("not a two-step scikit-learn Pipeline")
    select, model = pipeline.steps[0][1], pipeline.steps[1][1]
    if type(select) is not ColumnTransformer:
        raise NotCompilable("first step is not a ColumnTransformer")
    parts = [t for t in select.transformers_ if t[0] != "remainder"]
    if (len(select.transformers) != 1 or select.transformers[0][1] != "passthrough"
            or len(parts) != 1 or not _identity(parts[0][1]) or select.remainder != "drop"
            or not all(isinstance(c, str) for c in parts[0][2])):
        raise NotCompilable("ColumnTransformer does more than select columns by name")
    columns = list(parts[0][2])
    if type(model) is LogResidualRegressor or (
            type(model) is TargetFormRegressor and model.form in ("log_level", "level", "change")):
        form = model.form
    else:
        raise NotCompilable(f"final step is {type(model).__name__}, not a known wrapper")
    tree = getattr(model, "estimator_", None)
    if type(tree) is not HistGradientBoostingRegressor:
        raise NotCompilable(f"{type(model).__name__} wraps {type(tree).__name__}")
    link = type(getattr(getattr(tree, "_loss", None), "link", None)).__name__
    if link != "IdentityLink":
        raise NotCompilable(f"loss {tree.loss!r} has a {link} link, not identity")
    if list(getattr(tree, "feature_names_in_", [])) != columns:
        raise NotCompilable("the trees' feature names differ from the selected columns")
    if form in ("log_change", "change") and model.anchor not in columns:
        raise NotCompilable(f"anchor column {model.anchor!r} is not an input")
    return columns, model, tree, form


def _identity(transformer: Any) -> bool:
    """A fitted "passthrough" (scikit-learn stores it as an identity FunctionTransformer)."""
    from sklearn.preprocessing import FunctionTransformer

    if isinstance(transformer, str):
        return transformer == "passthrough"
    return (type(transformer) is FunctionTransformer and transformer.func is None
            and transformer.inverse_func is None)


@dataclass
class MeanPredictor(Predictor):
    """A :class:`~pipeline.core.models.MeanRegressor`: the mean of its members' compiled
    predictors (each takes its own columns out of ``columns``)."""

    members: list[Predictor] = field(default_factory=list)
    _member_index: list[np.ndarray | None] = field(default_factory=list)  # None: all columns

    def _predict_treelite(self, rows: np.ndarray) -> np.ndarray:
        rows = np.atleast_2d(rows)
        return np.mean([m._predict_treelite(rows if index is None else rows[:, index])
                        for m, index in zip(self.members, self._member_index, strict=True)],
                       axis=0)


def _build_mean(target: str, horizon: int, ensemble: Any, features: Sequence[str],
                verify_rows: np.ndarray) -> Predictor:
    members = [build_predictor(target, horizon, m, features, verify_rows)
               for m in ensemble.members]
    columns = list(dict.fromkeys(c for m in members for c in m.columns))
    slow = [m.reason for m in members if m.engine != TREELITE]
    if slow or not members:
        return _fallback(target, horizon, ensemble, columns,
                         f"a member is not compilable: {slow[0] if slow else 'no members'}")
    index = [None if m.columns == columns
             else np.array([columns.index(c) for c in m.columns], dtype=np.intp)
             for m in members]
    return MeanPredictor(target, horizon, columns, ensemble, TREELITE, "", members=members,
                         _member_index=index)


def build_predictor(target: str, horizon: int, pipeline: Any, features: Sequence[str],
                    verify_rows: np.ndarray) -> Predictor:
    """Compile one Pipeline if it is exact on ``verify_rows`` (in ``features`` order); a mean
    of models member by member."""
    from pipeline.core.models import MeanRegressor

    if type(pipeline) is MeanRegressor:
        return _build_mean(target, horizon, pipeline, features, verify_rows)
    try:
        columns, model, tree, form = _structure(pipeline)
    except NotCompilable as exc:
        columns = _selected_columns(pipeline, features)
        return _fallback(target, horizon, pipeline, columns, str(exc))
    try:
        import treelite

        compiled = treelite.sklearn.import_model(tree)
        runner = Gtil(compiled)
    except Exception as exc:  # the compiler refused this model: serve it with scikit-learn
        return _fallback(target, horizon, pipeline, columns, f"treelite import failed: {exc}")
    anchor = columns.index(model.anchor) if model.anchor in columns else -1
    predictor = Predictor(target, horizon, columns, pipeline, TREELITE, "", compiled,
                          anchor, float(model.fallback_), runner, form)
    missing = [c for c in columns if c not in features]
    if missing:
        raise ValueError(f"model {target} h={horizon} needs inputs not built: {missing[:5]}")
    rows = verify_rows[:, [list(features).index(c) for c in columns]]
    with np.errstate(over="ignore", invalid="ignore"):  # extreme random rows overflow expm1
        fast, reference = predictor.predict(rows), predictor.predict_sklearn(rows)
        same = (fast == reference) | (
            np.abs(fast - reference) <= TOLERANCE + RELATIVE_TOLERANCE * np.abs(reference))
        worst = float(np.max(np.where(same, 0.0, np.abs(fast - reference)), initial=0.0))
    if not same.all():
        return _fallback(target, horizon, pipeline, columns,
                         f"treelite differs from scikit-learn by {worst:.3g} on verification rows")
    return predictor


def _selected_columns(pipeline: Any, features: Sequence[str]) -> list[str]:
    names = getattr(pipeline, "feature_names_in_", None)
    return list(names) if names is not None else list(features)


def _fallback(target: str, horizon: int, pipeline: Any, columns: list[str], reason: str,
              ) -> Predictor:
    log.warning("serving %s h=%d with scikit-learn: %s", target, horizon, reason)
    return Predictor(target, horizon, columns, pipeline, SKLEARN, reason)


@dataclass
class FusedTrees:
    """Every compiled model of a champion (each member of a mean) in ONE Treelite model over
    the champion's feature order, evaluated tree by tree in one call.

    GTIL costs ~30 us of set-up per call whatever the model's size, and a champion has a
    model per horizon, a mean of 2 per horizon by default: one call instead of eight. Each
    member's trees are a copy of its compiled trees with the split features renumbered into
    the champion's order; its raw output is its base score plus the sum of its trees, then the
    member's own inverse transform (:meth:`Predictor._finish`), then the mean of a mean's
    members. Used only when, on the verification rows, it equals each model's
    ``Pipeline.predict`` within the tolerance (:func:`fuse`).
    """

    keys: list[ModelKey]
    members: list[tuple[int, Predictor, int]]  # (key position, member, its anchor's column)
    starts: np.ndarray  # each member's first tree
    bases: np.ndarray  # each member's base score
    runner: Gtil  # per tree
    # members sharing a target form (and whether they have an anchor), inverted in one call:
    # (form, their positions, their anchors' columns or None, their fallbacks)
    _forms: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]] = field(init=False)
    _first: np.ndarray = field(init=False)  # each key's first member (members are key-major)
    _count: np.ndarray = field(init=False)  # each key's number of members

    def __post_init__(self) -> None:
        groups: dict[tuple[str, bool], list[int]] = {}
        for j, (_, member, anchor) in enumerate(self.members):
            groups.setdefault((member._form, anchor >= 0), []).append(j)
        self._forms = [(form, np.array(js, dtype=np.intp),
                        np.array([self.members[j][2] for j in js], dtype=np.intp) if anchored
                        else None,
                        np.array([self.members[j][1]._fallback for j in js], dtype=np.float64))
                       for (form, anchored), js in groups.items()]
        positions = [k for k, _, _ in self.members]
        if positions != sorted(positions) or set(positions) != set(range(len(self.keys))):
            raise ValueError("fused members must be grouped by key, every key present")
        self._first = np.searchsorted(positions, np.arange(len(self.keys))).astype(np.intp)
        self._count = np.bincount(positions, minlength=len(self.keys)).astype(np.float64)

    def predict(self, rows: np.ndarray) -> dict[ModelKey, np.ndarray]:
        """Each member's trees, its inverse transform (every member of a form in one call of
        the one ``inverse_target``), then each key's mean of its members (a sum and one
        division, as ``np.mean`` does; one member: divided by 1)."""
        raw = np.add.reduceat(self.runner(rows), self.starts, axis=1) + self.bases
        value = np.empty_like(raw)
        for form, js, anchors, fallbacks in self._forms:
            value[:, js] = inverse_target(form, raw[:, js],
                                          None if anchors is None else rows[:, anchors],
                                          fallbacks)
        mean = np.add.reduceat(value, self._first, axis=1) / self._count
        return {key: mean[:, k] for k, key in enumerate(self.keys)}


def fuse(predictors: Mapping[ModelKey, Predictor], features: Sequence[str],
         verify_rows: np.ndarray) -> FusedTrees | None:
    """The champion's compiled models as one :class:`FusedTrees`, or None (a model served by
    scikit-learn, a Treelite refusal, or any difference from the models beyond the
    tolerance on ``verify_rows``, in ``features`` order)."""
    import treelite

    position = {name: i for i, name in enumerate(features)}
    keys = list(predictors)
    members: list[tuple[int, Predictor, int]] = []
    for k, key in enumerate(keys):
        predictor = predictors[key]
        if predictor.engine != TREELITE:
            return None
        parts = predictor.members if isinstance(predictor, MeanPredictor) else [predictor]
        if not parts or any(m.engine != TREELITE or m._tree is None for m in parts):
            return None
        members += [(k, m, position[m.columns[m._anchor]] if m._anchor >= 0 else -1)
                    for m in parts]
    try:
        copies, bases = [], []
        for _, member, _ in members:
            copy = treelite.Model.deserialize_bytes(member._tree.serialize_bytes())
            header = copy.get_header_accessor()
            # get_field gives a view of the model's memory: copied before set_field frees it
            base = np.array(header.get_field("base_scores"), dtype=np.float64, copy=True)
            if base.size != 1 or int(np.asarray(header.get_field("average_tree_output"))[0]):
                return None
            index = np.array([position[c] for c in member.columns], dtype=np.int32)
            for tree in range(copy.num_tree):
                accessor = copy.get_tree_accessor(tree)
                split = accessor.get_field("split_index")
                accessor.set_field("split_index", np.where(
                    split >= 0, index[np.maximum(split, 0)], split).astype(np.int32))
            header.set_field("num_feature", np.array([len(features)], dtype=np.int32))
            header.set_field("base_scores", np.zeros(1, dtype=np.float64))
            copies.append(copy)
            bases.append(float(base[0]))
        counts = [c.num_tree for c in copies]
        fused = FusedTrees(keys, members, np.cumsum([0, *counts[:-1]]).astype(np.intp),
                           np.array(bases), Gtil(treelite.Model.concatenate(copies),
                                                    per_tree=True))
    except Exception as exc:  # Treelite refused: each model keeps its own compiled trees
        log.warning("fused trees unavailable (%s): one call per model", exc)
        return None
    worst = fused_difference(fused, predictors, features, verify_rows)
    if worst:
        log.warning("fused trees differ from scikit-learn (%s): one call per model", worst)
        return None
    return fused


def fused_difference(fused: FusedTrees, predictors: Mapping[ModelKey, Predictor],
                     features: Sequence[str], rows: np.ndarray) -> str:
    """Where the fused trees differ from each model's ``Pipeline.predict`` beyond the
    tolerance on ``rows`` (in ``features`` order); "" when nowhere."""
    position = {name: i for i, name in enumerate(features)}
    with np.errstate(over="ignore", invalid="ignore"):
        got = fused.predict(np.ascontiguousarray(rows, dtype=np.float64))
        for key, predictor in predictors.items():
            reference = predictor.predict_sklearn(rows[:, [position[c]
                                                           for c in predictor.columns]])
            same = (got[key] == reference) | (np.abs(got[key] - reference)
                                              <= TOLERANCE + RELATIVE_TOLERANCE
                                              * np.abs(reference))
            if not same.all():
                i = int(np.flatnonzero(~same)[0])
                return (f"{key}: {got[key][i]!r} against {reference[i]!r} on verification row "
                        f"{i} of {len(rows)}")
    return ""


@dataclass
class ServedModel:
    """A verified champion and its compiled predictors: the forecaster's engine in serving."""

    champion: Champion
    predictors: dict[ModelKey, Predictor]
    fused: FusedTrees | None = None  # all compiled models in one call (:func:`fuse`)
    _index: dict[ModelKey, np.ndarray | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        position = {name: i for i, name in enumerate(self.features)}
        for key, predictor in self.predictors.items():
            missing = [c for c in predictor.columns if c not in position]
            if missing:
                raise ValueError(f"model {key} needs inputs the features do not include: "
                                 f"{missing[:5]}")
            index = np.array([position[c] for c in predictor.columns], dtype=np.intp)
            same = len(index) == len(self.features) and np.array_equal(
                index, np.arange(len(self.features)))
            self._index[key] = None if same else index

    @property
    def version(self) -> str:
        return self.champion.version

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self.champion.metadata

    @property
    def features(self) -> tuple[str, ...]:
        return self.champion.features

    @property
    def spec(self) -> Any:
        return self.champion.spec

    @property
    def targets(self) -> list[str]:
        return self.champion.targets

    @property
    def horizons(self) -> list[int]:
        return self.champion.horizons

    @property
    def engines(self) -> dict[str, dict[str, str]]:
        """Per target and horizon (the keys' serialised form): treelite or sklearn."""
        return nest({key: p.engine for key, p in self.predictors.items()})

    def predict(self, rows: np.ndarray) -> dict[ModelKey, np.ndarray]:
        """Every model's forecasts of rows in the champion's feature order (the engine)."""
        rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
        if self.fused is not None:
            return self.fused.predict(rows)
        out = {}
        for key, predictor in self.predictors.items():
            index = self._index[key]
            out[key] = predictor.predict(rows if index is None else rows[:, index])
        return out


def verification_rows(features: Sequence[str], history_rows: np.ndarray | None,
                      location_codes: Mapping[str, int], n: int = 256, seed: int = 0,
                      ) -> np.ndarray:
    """Rows to check the compiled trees on: real feature rows plus seeded random ones.

    The random rows spread over several orders of magnitude with 20% missing values, so
    splits on both sides and the missing-value branches are exercised; the location code
    stays a known category.
    """
    rng = np.random.default_rng(seed)
    random = rng.lognormal(mean=2.0, sigma=1.5, size=(n, len(features)))
    random *= rng.choice([-1.0, 1.0], size=random.shape, p=[0.2, 0.8])
    random[rng.random(random.shape) < 0.2] = np.nan
    if "location_code" in features and location_codes:
        codes = np.array(sorted(location_codes.values()), dtype=np.float64)
        random[:, list(features).index("location_code")] = rng.choice(codes, size=n)
    if history_rows is None or len(history_rows) == 0:
        return random
    return np.vstack([history_rows, random])
