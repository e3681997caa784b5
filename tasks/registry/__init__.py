"""The MLflow side: parent and child runs, model versions registered with their lineage
tags and found again by their content key, aliases, and registered versions brought back as
release inputs."""
