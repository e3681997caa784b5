"""Engines: a registered model built for one kind of device (a target), checked on the canary set.

Nothing here imports Airflow or MLflow, so builds run on a GPU worker and engines load on a device
with only their runtime installed."""
