"""Secrets masked wherever pytest-infer echoes text it was given: a token inside a model id or URL
(``https://user:hf_xxx@host/org/model``, ``?token=...``), and the token formats of the services a CI job
holds keys for (Hugging Face, GitHub, AWS, OpenAI, Slack), wherever they appear in a message.

:func:`mask` is applied to the terminal (the header, the matrix, usage errors, failure messages) and to
everything the reports write (:func:`mask_data` over the JSON document, the Markdown). A masked secret keeps
its first four characters (``hf_a***``) so a reader can tell which token it was without learning it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
_TOKENS = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{16,}"  # Hugging Face
    r"|(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"  # GitHub
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    r"|sk-[A-Za-z0-9_-]{20,}"  # OpenAI and alike
    r"|xox[abposr]-[A-Za-z0-9-]{10,})"  # Slack
)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/\s:@]+)(?::(?P<password>[^/\s@]*))?@")
_QUERY = re.compile(
    r"(?P<key>[?&;](?:[A-Za-z_]*token|api[_-]?key|key|secret|password|passwd|pwd|sig|signature|auth|"
    r"credential|X-Amz-Signature|X-Amz-Credential)=)(?P<value>[^&\s#'\"]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<key>\b(?:Bearer|token)\s+)(?P<value>[A-Za-z0-9._~+/=-]{16,})")


def _hide(secret: str) -> str:
    return secret[:4] + MASK if len(secret) > 8 else MASK


def mask(text: str) -> str:
    """``text`` with every secret it holds masked (unchanged when it holds none)."""
    if not text:
        return text
    out = _TOKENS.sub(lambda m: _hide(m.group(0)), text)

    def userinfo(m: re.Match[str]) -> str:
        if m.group("password") is not None:  # user:password@
            return f"{m.group('scheme')}{m.group('user')}:{MASK}@"
        return f"{m.group('scheme')}{MASK}@"  # a lone token as the user part (https://TOKEN@host)

    out = _USERINFO.sub(userinfo, out)
    out = _QUERY.sub(lambda m: m.group("key") + MASK, out)
    return _BEARER.sub(lambda m: m.group("key") + MASK, out)


def mask_data(data: Any) -> Any:
    """Every string in ``data`` (dicts, lists, tuples; keys too) masked."""
    if isinstance(data, str):
        return mask(data)
    if isinstance(data, Mapping):
        return {mask_data(k): mask_data(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [mask_data(v) for v in data]
    return data
