"""Engine runtimes, one module each (see tasks.engines.runtime.MODULES), imported only when used."""
