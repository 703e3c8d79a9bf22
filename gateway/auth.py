"""Bearer-token authentication with two scopes: `read` for the Recommender, `write` for changes.

`read` allows Recommend, RecordView, RecordFeedback, GetHistory and the Catalog's GetProductImage; `write` allows
ForgetUser and the Catalog's UpsertProducts and DeleteProducts. A token has the scopes it lists
(`write` does not imply `read`).
Tokens come from AUTH_TOKENS_FILE (a JSON file) or AUTH_TOKENS (the same JSON inline), an object
mapping each token to its scopes: `{"<token>": ["read"], "<another token>": ["read", "write"]}`.
With neither set, authentication is off. Only SHA-256 digests of the tokens are kept, and a token is
never logged or echoed. Health checking and reflection stay open, so probes need no token.
"""

import hashlib
import json
from collections.abc import Iterable, Mapping

from .config import Settings
from .domain import PermissionDenied, Unauthenticated

SCOPES = frozenset({"read", "write"})
SCOPE_OF_METHOD = {
    "/recsys.v1.Recommender/Recommend": "read",
    "/recsys.v1.Recommender/RecordView": "read",
    "/recsys.v1.Recommender/RecordFeedback": "read",
    "/recsys.v1.Recommender/GetHistory": "read",
    "/recsys.v1.Recommender/ForgetUser": "write",
    "/recsys.v1.Catalog/UpsertProducts": "write",
    "/recsys.v1.Catalog/DeleteProducts": "write",
    "/recsys.v1.Catalog/GetProductImage": "read",
}
MIN_TOKEN_LENGTH = 16
HEADER = "authorization"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    """Checks the bearer token in a call's metadata against the configured tokens and their scopes."""

    def __init__(self, tokens: Mapping[str, Iterable[str]]) -> None:
        if not tokens:
            raise ValueError("the token table is empty; leave AUTH_TOKENS(_FILE) unset to turn authentication off")
        self._scopes: dict[bytes, frozenset[str]] = {}
        for number, (token, scopes) in enumerate(tokens.items(), start=1):
            listed = isinstance(scopes, (list, tuple, set, frozenset)) and all(isinstance(s, str) for s in scopes)
            granted = frozenset(scopes) if listed else frozenset()
            if len(token) < MIN_TOKEN_LENGTH or not token.isascii() or not token.isprintable() or " " in token:
                raise ValueError(f"token #{number} is not usable: tokens are at least {MIN_TOKEN_LENGTH} printable "
                                 "ASCII characters without spaces")
            if not granted or not granted <= SCOPES:
                raise ValueError(f"token #{number} must list scopes among {sorted(SCOPES)}, e.g. [\"read\"]")
            self._scopes[_digest(token)] = granted

    @classmethod
    def from_json(cls, text: str, source: str) -> "Authenticator":
        """Tokens from a JSON object mapping each token to a list of scopes."""
        try:
            table = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{source} is not valid JSON: line {error.lineno}, column {error.colno}") from None
        if not isinstance(table, dict):
            raise ValueError(f"{source} must be a JSON object mapping each token to a list of scopes")
        return cls(table)

    def check(self, method: str, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        """Returns if the call's bearer token grants the method's scope; raises Unauthenticated or
        PermissionDenied otherwise. `method` is the full path, e.g. /recsys.v1.Catalog/UpsertProducts."""
        values = [value for key, value in metadata if key == HEADER]
        if not values:
            raise Unauthenticated(f"this method needs a bearer token: send the metadata '{HEADER}: Bearer <token>'")
        scheme, _, token = str(values[0]).partition(" ")
        if len(values) > 1 or scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(f"the '{HEADER}' metadata must be exactly one 'Bearer <token>'")
        scopes = self._scopes.get(_digest(token.strip()))
        if scopes is None:
            raise Unauthenticated("the bearer token is not valid")
        needed = SCOPE_OF_METHOD.get(method)
        if needed not in scopes:
            raise PermissionDenied(f"the token lacks the '{needed or 'unknown'}' scope that {method} needs")


def authenticator_for(settings: Settings) -> Authenticator | None:
    """The configured authenticator, or None when authentication is off (no AUTH_TOKENS(_FILE))."""
    if settings.auth_tokens_file:
        return Authenticator.from_json(settings.auth_tokens_file.read_text(),
                                       f"AUTH_TOKENS_FILE {settings.auth_tokens_file}")
    if settings.auth_tokens:
        return Authenticator.from_json(settings.auth_tokens, "AUTH_TOKENS")
    return None
