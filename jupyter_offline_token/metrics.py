"""Prometheus metrics, registered once in prometheus_client's default registry.

jupyter_server's ``/metrics`` handler renders that registry, so these appear there without any
handler of our own. They are module-level singletons because a registry refuses duplicate names
(several ExtensionApp instances in one test process share them).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REFRESH_RESULTS = ("success", "transient_error", "permanent_error")
ACCESS_SOURCES = ("cache", "refresh", "shared")  # shared: another process's grant

refresh_total = Counter(
    "offline_token_refresh",
    "Refresh-token grants attempted at the provider, by result.",
    ["result"],
)
refresh_duration_seconds = Histogram(
    "offline_token_refresh_duration_seconds",
    "Duration of a refresh: decrypt, grant at the provider, encrypt and durable write.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
access_token_requests_total = Counter(
    "offline_token_access_token_requests",
    "Access tokens handed out, by where they came from.",
    ["source"],
)
tokens = Gauge("offline_token_tokens", "Vault entries by status.", ["status"])
refresh_retrying = Gauge(
    "offline_token_refresh_retrying", "Tokens whose refresh is retrying after a transient fault."
)

# Pre-create every label so a scrape shows zeros instead of missing series.
for _result in REFRESH_RESULTS:
    refresh_total.labels(result=_result)
for _source in ACCESS_SOURCES:
    access_token_requests_total.labels(source=_source)
# The cached access-token route counts every hit: look its labelled child up once.
access_from_cache = access_token_requests_total.labels(source="cache")


def set_token_counts(counts: dict[str, int]) -> None:
    from .models import TOKEN_STATUSES

    for status in TOKEN_STATUSES:
        tokens.labels(status=status).set(counts.get(status, 0))
