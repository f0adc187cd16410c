"""Locust load test of the serving app with an SLO gate (``make loadtest``, docs/serving.md)."""
