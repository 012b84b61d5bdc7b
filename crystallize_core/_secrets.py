"""Credentials kept out of what a run records: results, logs, summaries.

A strategy's options are recorded with its result so that the run can be
reproduced; a queue URL with a password in it, or an API token, must not
travel with them into a file that is shared. ``masked`` is the one place that
decides what counts as a secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: What a masked secret reads as.
MASK = "***"

#: Words of an option's name that say its value is a secret (``db_password``, ``apiKey``, ``auth``).
_SECRET_WORDS = frozenset(
    {
        "auth",
        "authorization",
        "cookie",
        "credential",
        "credentials",
        "passphrase",
        "pass",
        "passwd",
        "password",
        "pwd",
        "secret",
        "secrets",
        "token",
        "tokens",
    }
)
#: Names that a secret ``key`` ends with: ``api_key``, ``access_key``, ``private_key``, ``key``.
_KEY_PREFIXES = frozenset({"", "api", "access", "private", "secret", "signing", "encryption", "auth", "client"})
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
#: ``scheme://userinfo@``: the userinfo of a URL, where its credentials are.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^@/\s?#]*)@")
#: ``?name=value`` or ``&name=value`` in a URL's query.
_QUERY_PARAMETER = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&;#\s]+)=(?P<value>[^&;#\s]*)")


def is_secret_name(name: str) -> bool:
    """Whether an option named ``name`` holds a secret: a password, token, key, credentials."""
    words = [word.lower() for word in _WORD.findall(name)]
    if not words:
        return False
    if any(word in _SECRET_WORDS for word in words) or "apikey" in words:
        return True
    return words[-1] == "key" and (len(words) == 1 or words[-2] in _KEY_PREFIXES)


def masked_text(text: str) -> str:
    """``text`` with the credentials of any URL in it masked: the password of
    ``redis://:pw@host`` or ``tcp://user:pw@host``, a bare ``https://TOKEN@host``,
    and query parameters named like secrets (``?token=...``)."""
    if "://" not in text and "=" not in text:
        return text

    def userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        kept = f"{user}:{MASK}" if colon else MASK  # a user alone may be a token (https://TOKEN@host)
        return f"{match['scheme']}{kept}@"

    def parameter(match: re.Match[str]) -> str:
        if not is_secret_name(match["name"]) or not match["value"]:
            return match[0]
        return f"{match['lead']}{match['name']}={MASK}"

    return _QUERY_PARAMETER.sub(parameter, _URL_USERINFO.sub(userinfo, text))


#: Names under which even a number is a secret (a numeric password or token).
_NUMERIC_SECRETS = frozenset({"password", "passwd", "pass", "secret", "token", "key", "apikey", "api_key"})


def _count_or_flag(name: str, value: Any) -> bool:
    """Whether ``value`` is a flag, or a number under a name that only mentions
    a secret (``max_tokens=100``, ``use_auth=True``, ``auth_timeout=5``)."""
    if isinstance(value, bool):
        return True
    return isinstance(value, (int, float)) and name.lower().replace("-", "_") not in _NUMERIC_SECRETS


def masked(value: Any, name: str | None = None) -> Any:
    """``value`` as it may be recorded: secrets replaced by ``"***"``.

    A value under a name that ``is_secret_name`` accepts is masked whole,
    unless it is None, empty, a flag, or a number under a name that only
    mentions a secret (``max_tokens``); text has the credentials of
    its URLs masked; mappings, lists and tuples are masked item by item (a
    mapping's keys name its items). Anything else is returned as it is: make
    it text first (its ``repr``) to mask what it shows.
    """
    if name is not None and is_secret_name(name) and value not in (None, "") and not _count_or_flag(name, value):
        return MASK
    if isinstance(value, str):
        return masked_text(value)
    if isinstance(value, Mapping):
        return {key: masked(item, key if isinstance(key, str) else None) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [masked(item) for item in value]
        return items if isinstance(value, list) else tuple(items)
    return value
