"""The nightly pipeline as plain functions (prepare, run_variant, publish), the same in
one process, in an Airflow task or in a container; and real Airflow runs of its DAG."""
