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
