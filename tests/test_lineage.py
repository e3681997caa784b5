"""OpenLineage configuration and dataset names (the events themselves are read back from real DAG
runs in tests/test_dag.py and tests/test_fleet_release.py)."""

import json

import pytest
from pydantic import ValidationError

from tasks.core.settings import Settings
from tasks.flow.lineage import located, model_version
from tasks.flow.orchestration import airflow_environment


def test_events_go_to_a_file_under_the_home_unless_a_transport_is_named(tmp_path):
    settings = Settings(home=tmp_path)
    env = airflow_environment(settings)
    assert json.loads(env["AIRFLOW__OPENLINEAGE__TRANSPORT"]) == {
        "type": "file",
        "log_file_path": str(tmp_path / "lineage" / "openlineage.jsonl"),
        "append": True,
    }
    assert env["AIRFLOW__OPENLINEAGE__NAMESPACE"] == "slimline"
    assert (tmp_path / "lineage").is_dir()  # the file transport does not make it

    marquez = Settings(home=tmp_path, openlineage_transport="http://marquez:5000", openlineage_namespace="t")
    assert marquez.lineage_transport == {"type": "http", "url": "http://marquez:5000"}
    given = '{"type": "http", "url": "https://lineage.example", "auth": {"type": "api_key", "apiKey": "k"}}'
    assert Settings(home=tmp_path, openlineage_transport=given).lineage_transport == json.loads(given)
    # A child process (Airflow's tasks) sees the same settings.
    env = marquez.environment()
    assert (env["SLIMLINE_OPENLINEAGE_TRANSPORT"], env["SLIMLINE_OPENLINEAGE_NAMESPACE"]) == (
        "http://marquez:5000",
        "t",
    )


@pytest.mark.parametrize("bad", ["marquez:5000", '{"url": "http://x"}', "{not json"])
def test_a_bad_transport_fails_at_load_naming_the_setting(tmp_path, bad):
    with pytest.raises(ValidationError, match="openlineage_transport"):
        Settings(home=tmp_path, openlineage_transport=bad)


def test_datasets_are_named_by_the_openlineage_naming_spec_without_credentials(tmp_path):
    assert located("s3://bucket/team/ckpt/", "d1").model_dump() == {
        "namespace": "s3://bucket",
        "name": "team/ckpt",
        "version": "d1",
    }
    assert (located("file:///srv/store/ckpt").namespace, located("file:///srv/store/ckpt").name) == (
        "file",
        "/srv/store/ckpt",
    )
    server = Settings(home=tmp_path, mlflow_tracking_uri="https://bot:secret@mlflow.example:5000/ml?x=1")
    assert model_version(server, "m/3").model_dump() == {
        "namespace": "mlflow://mlflow.example:5000/ml",
        "name": "m/3",
        "version": None,
    }
