"""Air-quality forecasting pipeline: sources, features, models, registry and steps."""

__version__ = "0.1.0"
