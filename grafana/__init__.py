"""The Grafana dashboards as code (generate.py); provisioning files live beside it."""
