"""The vocabulary of the gateway: taxonomy, events, state rows, errors. No I/O."""
