"""Step 4 of the recovery path: prove who we are, fresh, before every attempt.

A :class:`CredentialProvider` is asked before every connect attempt, like DNS:
with the hub being dialled, it returns an :class:`Identity` (user name,
password or token, client id, client certificate files) and until when it is
valid. Nothing here caches an identity past its life; the engine renews one
before it expires (make before break) and asks again after a hub refused it.
"""

from device_sdk.identity.provider import (
    CallableCredentials,
    CredentialProvider,
    Identity,
    identity_for_attempt,
)
from device_sdk.identity.sas import SasTokenProvider, derive_device_key
from device_sdk.identity.x509 import X509Files

__all__ = [
    "CallableCredentials",
    "CredentialProvider",
    "Identity",
    "SasTokenProvider",
    "X509Files",
    "derive_device_key",
    "identity_for_attempt",
]
