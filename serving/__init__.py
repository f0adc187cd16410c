"""Online forecasts: the Flask app under gunicorn (docs/serving.md)."""
