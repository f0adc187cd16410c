"""Air-quality forecasting pipeline: sources, features, models, registry and steps."""
