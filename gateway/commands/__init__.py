"""Commands from the meldkamer: contract, checks, execution through the adapters, durable record."""
