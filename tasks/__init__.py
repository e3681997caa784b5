"""slimline: the nightly compression and release pipeline, as a package that reads as the flow.

Bottom-up (each layer imports only the layers below it; `tests/test_layers.py` enforces it):

- `tasks.core`: the shared ground: settings, errors, config base, object store, content-addressed
  artifacts, code versions, and the model folders every step reads and writes.
- `tasks.intake`: checkpoints from the store (fetched, verified) and the data (split, validated).
- `tasks.compress`: the techniques a recipe names, and the training loop they share.
- `tasks.gate`: evaluation of a model on the split, and the gates that judge it.
- `tasks.recipe`: the recipe, composed of the configs each layer below declares.
- `tasks.registry`: MLflow runs and registered model versions.
- `tasks.report`: the summary of a run, as a terminal table and an HTML release report.
- `tasks.flow`: the nightly pipeline as plain functions, and Airflow runs of its DAG.
- `tasks.demo` and `tasks.cli`: the demo and the command line, wiring only.
"""
