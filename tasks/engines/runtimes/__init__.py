"""Engine runtimes, one module each, imported only when a target names it (see tasks.engines.runtime)."""
