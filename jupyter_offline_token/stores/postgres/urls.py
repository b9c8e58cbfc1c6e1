"""Database URLs as they may be shown: without the password, ever."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

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


def password_of(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def scrub(text: str, url: str) -> str:
    """``text`` with the URL's password (raw and decoded) and the URL itself cut out."""
    text = text.replace(url, redact_url(url))
    try:
        raw = urlsplit(url).password
    except ValueError:
        raw = None
    for secret in {raw, password_of(url)}:
        if secret:
            text = text.replace(secret, "<password>")
    return text
