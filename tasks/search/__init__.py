"""Search under the gates: the space of compressed students and Optuna's loop over it."""
