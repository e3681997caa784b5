"""Signed release bundles: signing keys, the bundle a fleet installs (engines per target, the canary
set and the metrics each device must reproduce, the release number and expiry), and its verification.

Signing is OpenSSF model signing in private-key mode (no network). Nothing here imports Airflow,
MLflow or torch: `verify` runs on edge devices with only the engine runtime installed."""
