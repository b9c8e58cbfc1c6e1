"""OpenID Connect provider client over httpx (adapter layer: imports no service or handler).

Error policy: only an OAuth error answer from the provider (``{"error": ...}`` on a 4xx) or a
failed id_token check is a ``PermanentProviderError``; everything that does not prove the grant
dead (network, timeouts, 5xx, 429, unexpected statuses, malformed answers, a discovery
document for another issuer) is a ``TransientProviderError``, so a stored offline token is never
given up because of a proxy hiccup or a provider that is still starting.

Modules: ``client`` (``ProviderClient``: authorization URL, token and revocation requests),
``discovery`` (the provider metadata document), ``id_token`` (JWKS and id_token validation),
``tokens`` (the token endpoint's answer), ``transport`` (one HTTP exchange and the classification
of error answers), ``pkce`` (state, nonce and PKCE values).
"""

from .client import TOKEN_ENDPOINT_AUTH_METHODS, ProviderClient
from .discovery import ProviderMetadata
from .id_token import ID_TOKEN_ALGORITHMS, ID_TOKEN_LEEWAY
from .pkce import new_nonce, new_pkce, new_state, pkce_challenge
from .tokens import TokenResponse

__all__ = [
    "ID_TOKEN_ALGORITHMS",
    "ID_TOKEN_LEEWAY",
    "TOKEN_ENDPOINT_AUTH_METHODS",
    "ProviderClient",
    "ProviderMetadata",
    "TokenResponse",
    "new_nonce",
    "new_pkce",
    "new_state",
    "pkce_challenge",
]
