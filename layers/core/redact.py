"""Credentials never reach an error, a log line or a repr: :func:`redact_url`."""

from __future__ import annotations

import re

__all__ = ["redact_url"]

# user:password@ in any URL's authority (also before a comma-separated host list), and in
# a mistyped one ("redis:/user:pw@host", "://user:pw@host"), which errors quote too.
_USERINFO = re.compile(r"(?P<scheme>(?:[A-Za-z][A-Za-z0-9+.-]*)?:/{0,2})(?P<user>[^:@/]*):[^@/]*@")
# password=... (and similar) in a query string or a libpq keyword string.
_SECRET_PARAM = re.compile(r"(?i)\b(password|passwd|pass|secret|token)=([^&\s]*)")
# 'password': '...' in the repr of a dict of options.
_SECRET_ITEM = re.compile(r"""(?i)(['"](?:password|passwd|secret|token)['"]\s*:\s*)(['"]).*?\2""")


def redact_url(url: str) -> str:
    """Return ``url`` with any password shown as ``***`` (safe to print or raise).

    Handles ``scheme://user:password@host...`` (host lists included) and
    ``password=`` query or keyword parameters; everything else is kept, so the URL
    still says which server and database it names.
    """
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
    text = _SECRET_PARAM.sub(lambda m: f"{m[1]}=***", text)
    return _SECRET_ITEM.sub(lambda m: f"{m[1]}'***'", text)
