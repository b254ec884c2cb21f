"""GCMK gateway: legacy building-security hardware to the central meldkamer, with no alarm lost."""

__version__ = "0.1.0"
