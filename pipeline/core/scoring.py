"""Forecast scores: MAE, RMSE, R^2, skill against persistence, AQI-category accuracy."""

from __future__ import annotations

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


def score(target: str, y_true, y_pred, y_persistence, y_seasonal) -> dict[str, float]:
    """All scores of one target x horizon on the same rows."""
    model_mae = mae(y_true, y_pred)
    persistence_mae = mae(y_true, y_persistence)
    seasonal_mae = mae(y_true, y_seasonal)
    return {
        "n": int(len(y_true)),
        "mae": model_mae,
        "rmse": rmse(y_true, y_pred),
        "r2": r2(y_true, y_pred),
        "persistence_mae": persistence_mae,
        "seasonal_naive_mae": seasonal_mae,
        "skill": skill(model_mae, persistence_mae),
        "skill_vs_seasonal": skill(model_mae, seasonal_mae),
        "aqi_category_accuracy": aqi_category_accuracy(target, y_true, y_pred),
    }
