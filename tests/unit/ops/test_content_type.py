"""/metrics says the format generate_latest writes, with every prometheus-client version we allow."""

from __future__ import annotations

from prometheus_client import exposition

from gateway.ops.health import TEXT_FORMAT_0_0_4


def test_the_metrics_content_type_is_the_one_of_the_text_format_generate_latest_writes() -> None:
    expected = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", None) or exposition.CONTENT_TYPE_LATEST
    assert expected == TEXT_FORMAT_0_0_4
