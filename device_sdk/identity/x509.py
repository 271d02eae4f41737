"""A device certificate and key on disk (mutual TLS), re-read before every attempt.

Why re-read each time: certificates are rotated in place (by a provisioning
agent, an ACME-like client, an operator), and a device that kept the one it
started with would dial with an expired certificate until someone restarted
it. Reading a few kilobytes per attempt is cheap next to a TLS handshake.

Each read also yields the certificate's not-valid-after: the engine announces
a coming expiry (``warn_at``) with a
:class:`~device_sdk.events.CredentialExpiring` event, and refuses to dial with
a certificate that has expired (:class:`~device_sdk.errors.CredentialExpired`)
instead of letting the hub refuse it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.x509.oid import NameOID

from device_sdk.config import check_path
from device_sdk.core.topics import check_mqtt_string, shown
from device_sdk.errors import ConfigError, CredentialError
from device_sdk.identity.provider import Identity, check_private_file

if TYPE_CHECKING:
    from device_sdk.config import HubEndpoint

__all__ = ["DEFAULT_WARN_BEFORE", "X509Files"]

DEFAULT_WARN_BEFORE = 14 * 24 * 3600.0
_MAX_WARN_BEFORE = 366 * 24 * 3600.0
# A device certificate with its chain is a few kB; anything far larger is not one, and
# reading it whole before every attempt would cost a small board its memory.
_MAX_CERT_FILE = 1024 * 1024


class X509Files:
    """A client certificate and its private key, in PEM files, for mutual TLS.

    On every attempt the certificate is read again (the first one, when the
    file holds a chain) for its expiry, and the key file is checked to be
    private (mode 0600 or 0400), so a rotated pair is picked up without a
    restart. ``warn_before`` seconds before the certificate expires, the engine
    emits ``CredentialExpiring``.

    ``client_id_from_subject=True`` takes the certificate's subject common name
    as the MQTT client id: Azure IoT Hub X.509 devices and AWS IoT things are
    named by it. ``client_id`` and ``username`` set them outright instead (a
    hub's user-name template fills an unset user name).
    """

    __slots__ = (
        "_cert_file",
        "_client_id",
        "_client_id_from_subject",
        "_key_file",
        "_username",
        "_warn_before",
    )

    def __init__(
        self,
        *,
        cert_file: str | os.PathLike[str],
        key_file: str | os.PathLike[str],
        warn_before: float = DEFAULT_WARN_BEFORE,
        client_id: str | None = None,
        client_id_from_subject: bool = False,
        username: str | None = None,
    ) -> None:
        self._cert_file = check_path("x509.cert_file", _fspath(cert_file))
        self._key_file = check_path("x509.key_file", _fspath(key_file))
        if (
            isinstance(warn_before, bool)
            or not isinstance(warn_before, int | float)
            or not 0 <= warn_before <= _MAX_WARN_BEFORE
        ):
            raise ConfigError(
                "x509.warn_before", warn_before, f"seconds from 0 to {_MAX_WARN_BEFORE:g}"
            )
        self._warn_before = float(warn_before)
        if not isinstance(client_id_from_subject, bool):
            raise ConfigError(
                "x509.client_id_from_subject", client_id_from_subject, "True or False"
            )
        if client_id is not None:
            check_mqtt_string("x509.client_id", client_id)
            if client_id_from_subject:
                raise ConfigError(
                    "x509.client_id", shown(client_id), "unset when client_id_from_subject is True"
                )
        if username is not None:
            check_mqtt_string("x509.username", username, allow_empty=True)
        self._client_id = client_id
        self._client_id_from_subject = client_id_from_subject
        self._username = username

    @property
    def renewable(self) -> bool:
        """True: the files are read again, so a rotated certificate is a new identity."""
        return True

    @property
    def cert_file(self) -> str:
        """The certificate's path."""
        return self._cert_file

    @property
    def key_file(self) -> str:
        """The private key's path."""
        return self._key_file

    def identity_for(self, hub: HubEndpoint, *, client_id: str, after_refusal: bool) -> Identity:
        """The files as they are now, with the certificate's expiry; CredentialError if unusable."""
        check_private_file("x509.cert_file", self._cert_file, private=False, hub=hub.name)
        check_private_file("x509.key_file", self._key_file, private=True, hub=hub.name)
        certificate = _load_certificate(self._cert_file, hub.name)
        not_after = certificate.not_valid_after_utc.timestamp()
        chosen_id = self._client_id
        if self._client_id_from_subject:
            chosen_id = _common_name(certificate, self._cert_file, hub.name)
        return Identity(
            username=self._username,
            client_id=chosen_id,
            cert_file=self._cert_file,
            key_file=self._key_file,
            expires_at=not_after,
            warn_at=not_after - self._warn_before,
        )

    def __repr__(self) -> str:
        return (
            f"X509Files(cert_file={self._cert_file!r}, key_file={self._key_file!r}, "
            f"warn_before={self._warn_before:g})"
        )


def _fspath(path: object) -> object:
    """A path-like object as its text; anything else as is, for check_path to refuse."""
    if isinstance(path, os.PathLike):
        text = os.fspath(path)
        return text if isinstance(text, str) else path
    return path


def _load_certificate(path: str, hub: str) -> x509.Certificate:
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_CERT_FILE + 1)
    except OSError as exc:
        raise CredentialError(
            f"x509.cert_file {path!r} cannot be read: {exc.strerror or type(exc).__name__}",
            hub=hub,
        ) from None
    if len(data) > _MAX_CERT_FILE:
        raise CredentialError(
            f"x509.cert_file {path!r} is over {_MAX_CERT_FILE} bytes: not a device certificate",
            hub=hub,
        )
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        chain = []
    if not chain:  # raised outside the handler: the parser's text is not useful here
        raise CredentialError(f"x509.cert_file {path!r} does not hold a PEM certificate", hub=hub)
    return chain[0]


def _common_name(certificate: x509.Certificate, path: str, hub: str) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    problem = "has no subject common name"
    if isinstance(value, str) and value:
        try:
            check_mqtt_string("client_id", value)
            problem = ""
        except ConfigError:
            problem = "has a subject common name MQTT cannot carry as a client id"
    if problem:
        raise CredentialError(f"x509.cert_file {path!r} {problem}", hub=hub)
    assert isinstance(value, str)
    return value
