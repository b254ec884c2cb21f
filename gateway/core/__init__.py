"""The protocol-neutral core: ports, normaliser, pipeline, event factory, lifecycle contract."""
