"""A throwaway PKI: one CA and server certificates for hub FQDNs.

Certificates are short-lived (two days by default) and their ``not_before`` is
backdated by an hour, so a machine whose clock lags a little still accepts
them. Keys are EC P-256: fast to generate and accepted by OpenSSL, mosquitto and
Python's ``ssl``.

::

    ca = CertificateAuthority.create(common_name="testbed CA")
    server = ca.issue_server_certificate(["hub-a.device-sdk.test"])
    files = server.write_to(tmp_path)        # files.cert_file, files.key_file
    ca_file = ca.write_to(tmp_path)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_sdk.errors import ConfigError

__all__ = ["CertificateAuthority", "ServerCertificate", "ServerCertificateFiles"]

_DEFAULT_VALIDITY = dt.timedelta(days=2)
_BACKDATE = dt.timedelta(hours=1)
_PRIVATE_FILE_MODE = 0o600
_PUBLIC_FILE_MODE = 0o644


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerCertificateFiles:
    """Paths of a server certificate and its key as written by `ServerCertificate.write_to`."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerCertificate:
    """A server certificate issued by a `CertificateAuthority`, with its private key.

    ``cert_pem`` is the leaf followed by nothing else: the testbed CA signs
    leaves directly, so clients need only the CA file to verify.
    """

    certificate: x509.Certificate
    cert_pem: bytes
    key_pem: bytes

    def write_to(self, directory: Path | str, *, stem: str = "server") -> ServerCertificateFiles:
        """Write ``<stem>.crt`` and ``<stem>.key`` (mode 0600) into ``directory``."""
        folder = Path(directory)
        cert_file = folder / f"{stem}.crt"
        key_file = folder / f"{stem}.key"
        _write_file(cert_file, self.cert_pem, _PUBLIC_FILE_MODE)
        _write_file(key_file, self.key_pem, _PRIVATE_FILE_MODE)
        return ServerCertificateFiles(cert_file=cert_file, key_file=key_file)


class CertificateAuthority:
    """A self-signed certificate authority that lives as long as the test run.

    Create one with `CertificateAuthority.create`; the constructor only wraps
    an existing key and certificate.
    """

    def __init__(self, *, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> None:
        self._key = key
        self.certificate = certificate

    @classmethod
    def create(
        cls,
        *,
        common_name: str = "device_sdk testbed CA",
        validity: dt.timedelta = _DEFAULT_VALIDITY,
    ) -> CertificateAuthority:
        """Generate a new CA key and its self-signed certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        not_before, not_after = _validity_window(validity)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            # path_length=0: this CA signs leaves only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        return cls(key=key, certificate=builder.sign(key, hashes.SHA256()))

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate in PEM form (``ssl`` wants it as text: ``cadata=pem.decode()``)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write_to(self, directory: Path | str, *, filename: str = "ca.crt") -> Path:
        """Write the CA certificate (never its key) into ``directory`` and return the path."""
        path = Path(directory) / filename
        _write_file(path, self.cert_pem, _PUBLIC_FILE_MODE)
        return path

    def client_ssl_context(self) -> ssl.SSLContext:
        """An ``ssl`` client context that trusts this CA only and checks host names."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.cert_pem.decode())
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def issue_server_certificate(
        self,
        dns_names: Sequence[str],
        ip_addresses: Sequence[str] = (),
        *,
        validity: dt.timedelta = _DEFAULT_VALIDITY,
    ) -> ServerCertificate:
        """Issue a TLS server certificate whose SAN holds exactly these names and IPs.

        The testbed's hubs are dialled by IP while TLS verifies the FQDN, so the
        usual call names only the hub's FQDN and no IP at all.
        """
        names = _subject_alt_names(dns_names, ip_addresses)
        common_name = (list(dns_names) or list(ip_addresses))[0].rstrip(".")
        return self._issue(
            common_name,
            ExtendedKeyUsageOID.SERVER_AUTH,
            validity,
            x509.SubjectAlternativeName(names),
        )

    def issue_client_certificate(
        self, common_name: str, *, validity: dt.timedelta = _DEFAULT_VALIDITY
    ) -> ServerCertificate:
        """Issue a TLS client certificate (a device's identity) with subject CN ``common_name``.

        Azure IoT Hub's X.509 devices and AWS IoT things are named by this CN.
        ``validity`` sets its not-valid-after, so a test can watch an expiry warning.
        Written with :meth:`ServerCertificate.write_to` like a server's (key 0600).
        """
        if not common_name or not common_name.isprintable():
            raise ConfigError("common_name", common_name, "printable text")
        return self._issue(common_name, ExtendedKeyUsageOID.CLIENT_AUTH, validity)

    def _issue(
        self,
        common_name: str,
        usage: x509.ObjectIdentifier,
        validity: dt.timedelta,
        alt_names: x509.SubjectAlternativeName | None = None,
    ) -> ServerCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        not_before, not_after = _validity_window(validity)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(min(not_after, self.certificate.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(self._authority_key_identifier(), critical=False)
        )
        if alt_names is not None:
            builder = builder.add_extension(alt_names, critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        return ServerCertificate(
            certificate=certificate,
            cert_pem=certificate.public_bytes(serialization.Encoding.PEM),
            key_pem=_private_key_pem(key),
        )

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _validity_window(validity: dt.timedelta) -> tuple[dt.datetime, dt.datetime]:
    if validity <= dt.timedelta(0):
        raise ConfigError("validity", validity, "a positive duration")
    now = dt.datetime.now(dt.UTC)
    return now - _BACKDATE, now + validity


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    # An EC leaf signs the handshake (digital_signature); a CA signs certificates.
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _subject_alt_names(
    dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> list[x509.GeneralName]:
    if isinstance(dns_names, str) or isinstance(ip_addresses, str):
        # A bare string is a Sequence[str] of characters: refuse it instead of
        # issuing a certificate for "h", "u", "b".
        raise ConfigError("dns_names/ip_addresses", dns_names, "a list of strings, not a string")
    if not dns_names and not ip_addresses:
        raise ConfigError("dns_names", dns_names, "at least one DNS name or IP address")
    names: list[x509.GeneralName] = [x509.DNSName(_dns_name(name)) for name in dns_names]
    names.extend(x509.IPAddress(_ip_address(text)) for text in ip_addresses)
    return names


def _dns_name(name: str) -> str:
    cleaned = name.rstrip(".").lower()
    if not cleaned or not cleaned.isascii() or any(c.isspace() for c in cleaned):
        raise ConfigError("dns_names", name, "ASCII host names (IDNA A-labels), no spaces")
    return cleaned


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise ConfigError("ip_addresses", text, "IPv4 or IPv6 literals") from exc


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),  # mosquitto must load it without a passphrase
    )


def _write_file(path: Path, data: bytes, mode: int) -> None:
    # Create with the final mode, so a private key is never readable by others,
    # not even for the instant between open() and chmod().
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # an existing file keeps its old mode otherwise
        handle.write(data)
