"""One module per engine runtime, each a `tasks.engines.runtime.Runtime`; imported only when used."""
