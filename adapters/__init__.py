"""Protocol adapters: each turns one protocol's devices into `Reading`s for the gateway's pipeline."""
