"""Forecast scores: MAE, RMSE, R^2, skill against persistence, AQI-category accuracy.

The holdout scores are gathered a batch of rows at a time (:class:`ScoreSums`) from exact
sums (:class:`ExactSum`), so a step can stream a holdout of any number of locations and
report, to the last bit, what it would report from all of them at once.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from pipeline.core.aqi import category_index


def mae(y_true, y_pred) -> float:
    return float(np.mean(np.abs(np.asarray(y_true) - np.asarray(y_pred))))


def rmse(y_true, y_pred) -> float:
    return float(np.sqrt(np.mean((np.asarray(y_true) - np.asarray(y_pred)) ** 2)))


def r2(y_true, y_pred) -> float:
    y_true = np.asarray(y_true, dtype=float)
    denom = np.sum((y_true - y_true.mean()) ** 2)
    if denom == 0:
        return float("nan")
    return float(1 - np.sum((y_true - np.asarray(y_pred)) ** 2) / denom)


def skill(model_mae: float, reference_mae: float) -> float:
    """1 - MAE/MAE_reference: > 0 means better than the reference."""
    if reference_mae == 0:
        return float("nan")
    return float(1 - model_mae / reference_mae)


def aqi_category_accuracy(target: str, y_true, y_pred) -> float:
    try:
        truth = category_index(target, y_true)
        pred = category_index(target, y_pred)
    except ValueError:
        return float("nan")
    return float(np.mean(truth == pred))


class ExactSum:
    """The exact sum of float64 values, whatever the order and the batches they come in.

    A float sum depends on its order (each addition rounds), so summing a holdout batch by
    batch would not give the one-pass figure. Every finite float64 is an integer times
    ``2**(e - 1075)``, read from its bits: the values are bucketed by exponent, their
    integer mantissas summed exactly per bucket (as halves of 27 and 26 bits, whose sums
    stay below 2**53 in float64) and the buckets added as a Python integer scaled by
    ``2**SHIFT``. NaN and infinities make the sum what float arithmetic makes it (NaN, or
    +/-inf).
    """

    SHIFT = 1074  # the smallest subnormal is 2**-1074
    _CHUNK = 1 << 25  # values per bucketing pass: each bucket's halves stay below 2**53

    def __init__(self) -> None:
        self.scaled = 0  # the sum of the finite values times 2**SHIFT
        self.special = 0.0  # the sum of the NaN and infinite values (0.0 without any)

    def add(self, values) -> None:
        x = np.asarray(values, dtype=np.float64).ravel()
        finite = np.isfinite(x)
        if not finite.all():
            self.special += float(np.sum(x[~finite]))
            x = x[finite]
        for start in range(0, len(x), self._CHUNK):
            bits = np.ascontiguousarray(x[start:start + self._CHUNK]).view(np.int64)
            exponent = (bits >> 52) & 0x7FF
            mantissa = bits & ((1 << 52) - 1)
            mantissa[exponent > 0] |= 1 << 52  # the implicit leading bit of normal numbers
            np.maximum(exponent, 1, out=exponent)  # subnormals: 2**-1074 per unit
            np.negative(mantissa, out=mantissa, where=bits < 0)
            for shift, part in ((26, mantissa >> 26), (0, mantissa & ((1 << 26) - 1))):
                sums = np.bincount(exponent, weights=part)
                for index in np.flatnonzero(sums):
                    self.scaled += int(sums[index]) << (int(index) - 1 + shift)

    def fraction(self) -> Fraction:
        return Fraction(self.scaled, 1 << self.SHIFT)

    def finite(self) -> bool:
        """True unless a NaN or an infinity was added."""
        return self.special == 0

    def total(self) -> float:
        return float(self.fraction()) if self.finite() else self.special

    def mean(self, n: int) -> float:
        """The sum over ``n`` values, correctly rounded (NaN for none)."""
        if n == 0:
            return float("nan")
        return float(self.fraction() / n) if self.finite() else self.special


def exact_square(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x * x`` as a float64 product and its rounding error (Dekker): their sum is exact."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        product = x * x
        c = 134217729.0 * x  # 2**27 + 1: splits x into two 26-bit halves
        high = c - (c - x)
        low = x - high
        error = ((high * high - product) + 2 * high * low) + low * low
    return product, np.where(np.isfinite(product), error, 0.0)


class ScoreSums:
    """What :func:`score` needs of one target x horizon, added a batch of rows at a time;
    :meth:`result` is the same whatever the batches."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.n = 0
        self.abs_error = ExactSum()
        self.squared_error = ExactSum()
        self.persistence_error = ExactSum()
        self.seasonal_error = ExactSum()
        self.observed = ExactSum()
        self.observed_squared = ExactSum()  # exact: each square with its rounding error
        self.same_category = 0
        self.has_categories = True

    def add(self, y_true, y_pred, y_persistence, y_seasonal) -> None:
        y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
        error = y_true - y_pred
        self.n += len(y_true)
        self.abs_error.add(np.abs(error))
        self.squared_error.add(error**2)
        self.persistence_error.add(np.abs(y_true - np.asarray(y_persistence, float)))
        self.seasonal_error.add(np.abs(y_true - np.asarray(y_seasonal, float)))
        self.observed.add(y_true)
        for part in exact_square(y_true):
            self.observed_squared.add(part)
        if self.has_categories:
            try:
                self.same_category += int(np.sum(category_index(self.target, y_true)
                                                 == category_index(self.target, y_pred)))
            except ValueError:  # a target without an AQI scale
                self.has_categories = False

    def r2(self) -> float:
        """1 - SS_res / SS_tot, with SS_tot = sum(y^2) - sum(y)^2 / n exactly."""
        if self.n == 0:
            return float("nan")
        sums = (self.observed, self.observed_squared, self.squared_error)
        if not all(s.finite() for s in sums):  # a NaN or an infinity inside
            total = self.observed_squared.total() - self.observed.total() ** 2 / self.n
            return float(1 - self.squared_error.total() / total) if total else float("nan")
        total = self.observed_squared.fraction() - self.observed.fraction() ** 2 / self.n
        if total == 0:
            return float("nan")
        return float(1 - self.squared_error.fraction() / total)

    def result(self) -> dict[str, float]:
        model_mae = self.abs_error.mean(self.n)
        persistence_mae = self.persistence_error.mean(self.n)
        seasonal_mae = self.seasonal_error.mean(self.n)
        return {
            "n": int(self.n),
            "mae": model_mae,
            "rmse": float(np.sqrt(self.squared_error.mean(self.n))),
            "r2": self.r2(),
            "persistence_mae": persistence_mae,
            "seasonal_naive_mae": seasonal_mae,
            "skill": skill(model_mae, persistence_mae),
            "skill_vs_seasonal": skill(model_mae, seasonal_mae),
            "aqi_category_accuracy": (self.same_category / self.n
                                      if self.has_categories and self.n else float("nan")),
        }


def score(target: str, y_true, y_pred, y_persistence, y_seasonal) -> dict[str, float]:
    """All scores of one target x horizon on the same rows."""
    sums = ScoreSums(target)
    sums.add(y_true, y_pred, y_persistence, y_seasonal)
    return sums.result()
