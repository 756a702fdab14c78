"""Credentials out of URIs and log lines, before anything is written or logged.

A tracking URI such as ``https://alice:s3cret@mlflow.corp/`` or a presigned S3 URL
carries a secret in the text itself; the name of the config key that holds it does
not say so. Everything the project writes (``run.json``, ``config.yaml`` in
checkpoints and exports, MLflow params, log lines) goes through these two functions::

    redact_uri("https://alice:s3cret@host/x")          # 'https://alice:***@host/x'
    redact_uri("https://tok@host")                     # 'https://***@host'
    redact_uri("https://h/o?X-Amz-Signature=ab&a=1")   # 'https://h/o?X-Amz-Signature=***&a=1'
    redact_text("MLflow at http://u:p@h:5000 down")    # 'MLflow at http://u:***@h:5000 down'

Pure standard library: every package may import it (``flowception.redact``).
"""

from __future__ import annotations

import re

MASK = "***"

# Query-string keys whose values are secrets (AWS presigned URLs, tokens in links).
SECRET_QUERY = re.compile(
    r"signature|token|password|passwd|secret|credential|api[-_]?key|access[-_]?key|"
    r"^sig$|^auth$|^key$",
    re.IGNORECASE,
)
# ``scheme://userinfo@`` (userinfo ends at the last ``@`` before the first ``/``, ``?`` or ``#``)
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#]*)@")
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
# ``password=...``, ``"token": "..."``, ``AWS_SECRET_ACCESS_KEY=...`` in free text
_KEY_VALUE = re.compile(
    r"(?P<key>[A-Za-z0-9_.\-]*(?:password|passwd|secret|token|api[-_]?key|access[-_]?key(?:_id)?))"
    r"(?P<sep>[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\s\"',;&}]+)",
    re.IGNORECASE,
)


def _redact_query(query: str) -> str:
    parts = []
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if eq and value and SECRET_QUERY.search(key):
            value = MASK
        parts.append(f"{key}{eq}{value}")
    return "&".join(parts)


def redact_uri(uri: str) -> str:
    """``uri`` with its password (``user:***@``), lone user token (``***@``) and secret
    query values (``X-Amz-Signature=***``) masked; anything else unchanged.

    Args:
        uri: any string; strings that are not URIs come back as they are.
    """
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    m = _USERINFO.match(uri)
    if m:
        user, colon, _ = m.group("userinfo").partition(":")
        userinfo = f"{user}:{MASK}" if colon else MASK
        uri = f"{m.group('scheme')}{userinfo}@{uri[m.end() :]}"
    head, q, query = uri.partition("?")
    if q:
        query, hash_, fragment = query.partition("#")
        uri = f"{head}?{_redact_query(query)}{hash_}{fragment}"
    return uri


def redact_text(text: str) -> str:
    """Free text (a log line, a YAML file, an error message) with every URI redacted
    by ``redact_uri`` and ``password=...``-style values masked."""
    if not isinstance(text, str):
        return text
    text = _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)
    return _KEY_VALUE.sub(
        lambda m: (
            m.group(0) if m.group("value") == MASK else f"{m.group('key')}{m.group('sep')}{MASK}"
        ),
        text,
    )
