"""Online forecast serving (Flask + gunicorn): not built yet; batch forecasts: predictions/."""
