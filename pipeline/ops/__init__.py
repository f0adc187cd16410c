"""Local services for `make run`: the monitoring stack and Airflow, bound to 127.0.0.1."""
