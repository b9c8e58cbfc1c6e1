"""Database URLs as they may be shown: without the password, ever."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

URL_SETTING = "OfflineTokenApp.database_url (or $JUPYTER_OFFLINE_TOKEN_DATABASE_URL)"
SCHEMES = ("postgresql", "postgres")


def redact_url(url: str) -> str:
    """``postgresql://user@host:port/db``: what logs and errors may name (no password, no
    query string, which may carry one)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<an unparsable database URL>"
    if parts.scheme not in SCHEMES:
        return "<a database URL that is not postgresql://>"
    user = f"{unquote(parts.username)}@" if parts.username else ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    where = f"{host}:{port}" if port else host
    return f"postgresql://{user}{where}{parts.path}"


def passwords_of(url: str) -> set[str]:
    """The URL's password as written and decoded, in the user part or the query string."""
    try:
        parts = urlsplit(url)
        found = {parts.password or ""}
    except ValueError:
        return set()
    found |= {
        value for key, value in parse_qsl(parts.query, keep_blank_values=True) if key == "password"
    }
    found |= {unquote(value) for value in found}
    return {value for value in found if value}


def scrub(text: str, url: str) -> str:
    """``text`` with the URL itself and its password (in any spelling) cut out."""
    text = text.replace(url, redact_url(url))
    for secret in sorted(passwords_of(url), key=len, reverse=True):
        text = text.replace(secret, "<password>")
    return text
