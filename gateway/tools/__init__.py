"""Not on the production path: the reference receiver, the demo and its embedded broker."""
