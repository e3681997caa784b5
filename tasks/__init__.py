"""slimline: nightly compression and release pipeline for Transformer models."""
