"""The audit log: every decision and event of the pipeline as an append-only, hash-chained record in
the object store (one object per record, never overwritten), its head signed at intervals with the
release key like a transparency log's signed tree head, and `verify`, which names the first record
that was edited, deleted, reordered or forged. Nothing here imports Airflow or MLflow: the fleet,
registry and flow layers append to it."""
