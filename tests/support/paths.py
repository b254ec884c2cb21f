"""Where the repository's files are, for tests anywhere under tests/."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
