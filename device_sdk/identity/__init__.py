"""Step 4 of the recovery path: prove who we are, fresh, before every attempt.

A :class:`CredentialProvider` is asked before every connect attempt, like DNS:
with the hub being dialled, it returns an :class:`Identity` (user name,
password or token, client id, client certificate files) and until when it is
valid. Nothing here caches an identity past its life; the engine renews one
before it expires (make before break) and asks again after a hub refused it.
"""

from typing import TYPE_CHECKING

from device_sdk.identity.provider import (
    CallableCredentials,
    CredentialProvider,
    Identity,
    identity_for_attempt,
)

if TYPE_CHECKING:
    from device_sdk.identity.sas import SasTokenProvider, derive_device_key
    from device_sdk.identity.x509 import X509Files


def __getattr__(name: str) -> object:
    # X509Files parses certificates with cryptography, a third of a Raspberry Pi's
    # import budget; a device that signs in with a token never pays for it.
    if name == "X509Files":
        from device_sdk.identity.x509 import X509Files

        return X509Files
    # The SAS signer (hmac, hashlib, urllib.parse) only when a configuration signs tokens.
    if name in ("SasTokenProvider", "derive_device_key"):
        from device_sdk.identity import sas

        return getattr(sas, name)
    raise AttributeError(f"module 'device_sdk.identity' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "CallableCredentials",
    "CredentialProvider",
    "Identity",
    "SasTokenProvider",
    "X509Files",
    "derive_device_key",
    "identity_for_attempt",
]
