"""Signed download URLs for the local trainer's external-weights files (what tinker's
``get_external_weights_urls`` hands out): the URL itself is the credential, as a storage
bucket's signed URL is, so the download route asks for no API key.

A signature is an HMAC-SHA256, under a secret drawn when the server starts, of the file's path
and the URL's expiry; a URL whose signature does not match, or that expired, gets 403.

Example::

    signer = UrlSigner()
    query = signer.query("/_files/r/w/weights.npz", expires=int(time.time()) + 3600)
    signer.check("/_files/r/w/weights.npz", query["expires"], query["signature"])
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from ._http_errors import ApiError

__all__ = ["URL_LIFETIME_S", "UrlSigner"]

URL_LIFETIME_S = 3600
"""How long a signed URL stays valid."""


class UrlSigner:
    """Signs and checks download URLs (one secret per server; see the module docstring)."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def __repr__(self) -> str:
        return "UrlSigner(<secret>)"

    def _digest(self, path: str, expires: int) -> str:
        message = f"{path}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def query(self, path: str, *, expires: int) -> dict[str, str]:
        """The query parameters that make ``path`` downloadable until ``expires`` (epoch s)."""
        return {"expires": str(expires), "signature": self._digest(path, expires)}

    def check(self, path: str, expires: str | None, signature: str | None) -> None:
        """``ApiError(403)`` unless the signature is ``path``'s and the URL has not expired."""
        try:
            when = int(expires or "")
        except ValueError:
            raise ApiError(403, "not a signed URL (expires and signature are required)") from None
        if not signature or not hmac.compare_digest(self._digest(path, when), signature):
            raise ApiError(403, "the URL's signature does not match")
        if when <= time.time():
            raise ApiError(403, "the signed URL has expired")
