"""The concierge: a small service that tells devices which hub is active, and how devices
decide whether to believe it.

Device side (imported by the client): the signed endpoint document
(:mod:`.document`), its verification against pinned keys (:mod:`.trust`), the
persisted last accepted sequence (:mod:`.sequence_store`) and the bounded HTTPS
fetch (:mod:`.fetch`). Operator side: key generation and signing
(:mod:`.signing`), the reference service (:mod:`.service`, not imported here
so that devices do not load an HTTP server) and its command line (:mod:`.cli`).
``FORMAT.md`` in this folder specifies the document format.
"""

from typing import TYPE_CHECKING

from device_sdk.lazy_names import load_name, public_dir

if TYPE_CHECKING:
    from device_sdk.concierge.document import (
        FORMAT_VERSION,
        MAX_ENVELOPE_BYTES,
        SIGNATURE_ALGORITHM,
        DocumentHub,
        EndpointDocument,
        canonical_bytes,
        parse_document,
    )
    from device_sdk.concierge.fetch import ConciergeFetcher
    from device_sdk.concierge.sequence_store import SequenceStore
    from device_sdk.concierge.signing import (
        generate_keypair,
        load_private_key,
        load_public_key,
        public_key_text,
        sign_document,
        write_keypair,
    )
    from device_sdk.concierge.trust import ConciergeTrust, verify

# Names load on first use: the signing keys need cryptography and the fetch HTTP, and
# the command line (built for every `device-sdk` command) imports this package.
_HOMES = {
    "FORMAT_VERSION": "device_sdk.concierge.document",
    "MAX_ENVELOPE_BYTES": "device_sdk.concierge.document",
    "SIGNATURE_ALGORITHM": "device_sdk.concierge.document",
    "DocumentHub": "device_sdk.concierge.document",
    "EndpointDocument": "device_sdk.concierge.document",
    "canonical_bytes": "device_sdk.concierge.document",
    "parse_document": "device_sdk.concierge.document",
    "ConciergeFetcher": "device_sdk.concierge.fetch",
    "SequenceStore": "device_sdk.concierge.sequence_store",
    "generate_keypair": "device_sdk.concierge.signing",
    "load_private_key": "device_sdk.concierge.signing",
    "load_public_key": "device_sdk.concierge.signing",
    "public_key_text": "device_sdk.concierge.signing",
    "sign_document": "device_sdk.concierge.signing",
    "write_keypair": "device_sdk.concierge.signing",
    "ConciergeTrust": "device_sdk.concierge.trust",
    "verify": "device_sdk.concierge.trust",
}


def __getattr__(name: str) -> object:
    return load_name(globals(), __name__, _HOMES, name)


def __dir__() -> list[str]:
    return public_dir(globals(), __all__)


__all__ = [
    "FORMAT_VERSION",
    "MAX_ENVELOPE_BYTES",
    "SIGNATURE_ALGORITHM",
    "ConciergeFetcher",
    "ConciergeTrust",
    "DocumentHub",
    "EndpointDocument",
    "SequenceStore",
    "canonical_bytes",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "parse_document",
    "public_key_text",
    "sign_document",
    "verify",
    "write_keypair",
]
