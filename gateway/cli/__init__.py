"""The `gcmk-gateway` command line: the entry point above every other layer."""
