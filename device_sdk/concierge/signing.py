"""Ed25519 signing keys for the concierge: generate, store, load, sign.

The private key is written as unencrypted PKCS#8 PEM to a file created with
mode 0600 from the start (``os.open`` with ``O_CREAT | O_EXCL``): there is no
moment at which another user could read it, and an existing key is never
overwritten. The public key is written as SubjectPublicKeyInfo PEM; its raw
32 bytes in base64url (:func:`public_key_text`) are what device configs pin.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from device_sdk.concierge.document import EndpointDocument, canonical_bytes, encode_envelope
from device_sdk.errors import ConfigError

__all__ = [
    "KID_PATTERN",
    "KeyPairFiles",
    "check_kid",
    "decode_public_key",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "public_key_text",
    "sign_document",
    "write_keypair",
]

logger = logging.getLogger(__name__)

KID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
"""Key ids: 1-64 letters, digits, ``. _ -``, not starting with a dot (they name files)."""

_RAW_KEY_BYTES = 32
_PEM_MARKER = "-----BEGIN"
_RAW_KEY_TEXT = re.compile(r"[A-Za-z0-9_-]{43}=?")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPairFiles:
    """Where :func:`write_keypair` put a key pair, and the public key to pin."""

    kid: str
    private_key_file: Path
    public_key_file: Path
    public_key: str  # base64url of the raw 32 bytes


def generate_keypair() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    """A new random Ed25519 key pair."""
    private_key = Ed25519PrivateKey.generate()
    return private_key, private_key.public_key()


def check_kid(kid: object) -> str:
    if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
        raise ConfigError("kid", kid, "1-64 letters, digits, . _ - (not starting with '.')")
    return kid


def write_keypair(
    directory: Path | str, kid: str, *, private_key: Ed25519PrivateKey | None = None
) -> KeyPairFiles:
    """Write ``<kid>.key`` (mode 0600) and ``<kid>.pub`` into ``directory``.

    Refuses to overwrite either file. A new key pair is generated unless
    ``private_key`` is given.
    """
    check_kid(kid)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = private_key if private_key is not None else Ed25519PrivateKey.generate()
    private_file, public_file = folder / f"{kid}.key", folder / f"{kid}.pub"
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _create_file(private_file, private_pem, 0o600)
    try:
        _create_file(public_file, public_pem, 0o644)
    except BaseException:
        private_file.unlink()  # both or neither
        raise
    return KeyPairFiles(
        kid=kid,
        private_key_file=private_file,
        public_key_file=public_file,
        public_key=public_key_text(key.public_key()),
    )


def _create_file(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise ConfigError("key file", str(path), "a path where no file exists yet") from exc
    except OSError as exc:
        raise ConfigError("key file", str(path), f"a writable path ({exc.strerror})") from exc
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from an unencrypted PKCS#8 PEM file."""
    data = _read_key_file(path, "signing_key_file")
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # A warning, not a refusal: secret stores (Kubernetes volumes, for one)
        # often mount files group- or world-readable.
        logger.warning("signing key %s is readable by other users (mode %o)", path, mode & 0o777)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError("signing_key_file", str(path), "an unencrypted PEM key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("signing_key_file", str(path), "an Ed25519 private key")
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Load an Ed25519 public key from a PEM file."""
    return decode_public_key(_read_key_file(path, "public_key_file"), field=str(path))


def _read_key_file(path: Path | str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(field, str(path), f"a readable key file ({exc.strerror})") from exc


def decode_public_key(
    value: bytes | str | Ed25519PublicKey, *, field: str = "public key"
) -> Ed25519PublicKey:
    """An Ed25519 public key from raw 32 bytes, their base64url text, or PEM (str or bytes)."""
    if isinstance(value, Ed25519PublicKey):
        return value
    if isinstance(value, bytes) and len(value) == _RAW_KEY_BYTES:
        return Ed25519PublicKey.from_public_bytes(value)
    text = value.decode("ascii", errors="replace") if isinstance(value, bytes) else value
    if not isinstance(text, str):
        raise ConfigError(field, value, "an Ed25519 public key: raw bytes, base64url or PEM")
    if text.lstrip().startswith(_PEM_MARKER):
        return _pem_public_key(text, field)
    return _base64url_public_key(text.strip(), field)


def _pem_public_key(text: str, field: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(field, text[:80], "a PEM Ed25519 public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(field, text[:80], "an Ed25519 public key (not RSA or EC)")
    return key


def _base64url_public_key(text: str, field: str) -> Ed25519PublicKey:
    allowed = "base64url of a raw 32-byte Ed25519 key (43 characters)"
    if not _RAW_KEY_TEXT.fullmatch(text):
        raise ConfigError(field, text, allowed)
    try:
        raw = base64.urlsafe_b64decode(text.rstrip("=") + "=")
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(field, text, allowed) from exc
    return Ed25519PublicKey.from_public_bytes(raw)


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """The raw 32 key bytes in base64url without padding: the form device configs pin."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def sign_document(document: EndpointDocument, private_key: Ed25519PrivateKey, kid: str) -> bytes:
    """The envelope a concierge serves: ``document`` signed with ``private_key`` as ``kid``."""
    check_kid(kid)
    signature = private_key.sign(canonical_bytes(document.as_json()))
    return encode_envelope(document, kid=kid, signature=signature)
