"""`gcmk-gateway receive --group/--member`: a tier member needs both (checked before anything connects)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli.main import main
from tests.support.logs import configured_logging


@pytest.mark.parametrize("given", [["--group", "mk"], ["--member", "a"]])
def test_group_and_member_go_together(tmp_path: Path, given: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with configured_logging():
        code = main(["receive", "--broker", "mqtt://127.0.0.1:1", "--state-dir", str(tmp_path), *given])
    assert code == 2
    assert "--group and --member go together" in capsys.readouterr().err
