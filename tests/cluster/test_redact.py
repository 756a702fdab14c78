"""``flowception.redact``: secrets out of URIs and log lines, everything else untouched."""

from __future__ import annotations

import pytest

from flowception.redact import redact_text, redact_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://alice:s3cret@mlflow.corp:443/x", "https://alice:***@mlflow.corp:443/x"),
        ("http://tok3n@127.0.0.1:5000", "http://***@127.0.0.1:5000"),
        ("postgresql://u:p%40ss@db/mlflow", "postgresql://u:***@db/mlflow"),
        (
            "https://b.s3.amazonaws.com/o?X-Amz-Signature=abc&X-Amz-Security-Token=t&part=1",
            "https://b.s3.amazonaws.com/o?X-Amz-Signature=***&X-Amz-Security-Token=***&part=1",
        ),
        ("http://h/?password=pw#frag", "http://h/?password=***#frag"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("runs/local/path", "runs/local/path"),
        ("http://h/a@b", "http://h/a@b"),  # an @ in the path is no userinfo
    ],
)
def test_redact_uri(uri, expected):
    assert redact_uri(uri) == expected


def test_redact_text_masks_uris_and_key_values_only():
    line = (
        "MLflow at http://u:pw123@h:5000 unreachable; endpoint='https://k:sk@s3.local' "
        "AWS_SECRET_ACCESS_KEY=abc password: hunter2 visible_tokens_per_s=12.5 step=3"
    )
    out = redact_text(line)
    for secret in ("pw123", ":sk@", "abc", "hunter2"):
        assert secret not in out, secret
    assert "http://u:***@h:5000" in out and "https://k:***@s3.local" in out
    assert "visible_tokens_per_s=12.5 step=3" in out  # not a secret: a metric name
    assert redact_text("tracking_uri: http://a:b@c\nlog_every: 10\n") == (
        "tracking_uri: http://a:***@c\nlog_every: 10\n"
    )
