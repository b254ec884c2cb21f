"""The process: the Gateway supervisor and the composition root (wiring)."""
