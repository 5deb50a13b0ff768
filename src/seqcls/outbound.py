"""What leaves the process: no credential from a URL in any output, and only strict JSON.

An endpoint URL with a password (`AWS_ENDPOINT_URL_S3=http://user:password@host`) or a presigned query
string (`?X-Amz-Security-Token=...`) reaches our outputs through library error messages, so every log
line, failure reason, health body and JSON file passes through `clean`/`mask` on its way out. Non-finite
numbers become null: strict JSON parsers (JavaScript's, Go's, jq's) reject a bare NaN or Infinity.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MASK = "***"
# scheme://user:password@host or scheme://token@host: everything between "//" and "@" is a credential.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")
# A query parameter whose name says it carries a credential (AWS and GCS presigned URLs, OAuth tokens).
_QUERY_SECRET = re.compile(r"(?P<name>[?&][^=&\s'\"]*(?:token|signature|sig|credential|secret|password|key|auth)"
                           r"[^=&\s'\"]*=)[^&\s'\"]+", re.IGNORECASE)


def mask(text: str) -> str:
    """The text with URL credentials (userinfo, secret-looking query values) replaced by ***."""
    if "://" not in text and "=" not in text:
        return text
    return _QUERY_SECRET.sub(rf"\g<name>{MASK}", _USERINFO.sub(rf"\g<scheme>{MASK}@", text))


def clean(value: Any) -> Any:
    """A JSON-ready copy: strings masked, non-finite floats as None, containers walked."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """json.dumps of the cleaned value; allow_nan=False proves no NaN slipped through."""
    return json.dumps(clean(value), allow_nan=False, **options)
