"""X509Files: a device certificate and key on disk, re-read before every attempt.

Certificates are generated here with the testbed's throwaway CA (cryptography), with
known validity, so every expected time is read from the certificate itself.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device_sdk import HubEndpoint
from device_sdk.errors import ConfigError, CredentialError, CredentialExpired
from device_sdk.identity import CredentialProvider, X509Files, identity_for_attempt
from device_sdk.testbed.pki import CertificateAuthority, ServerCertificate

DAY = 86400.0


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(common_name="device CA", validity=dt.timedelta(days=90))


def hub() -> HubEndpoint:
    return HubEndpoint(name="a", fqdn="hub-a.example.test", port=8883, tls=None)


def not_after(cert: ServerCertificate) -> float:
    return cert.certificate.not_valid_after_utc.timestamp()


def write_pair(folder: Path, cert: ServerCertificate, *, chain: bytes = b"") -> tuple[str, str]:
    files = cert.write_to(folder, stem="device")
    if chain:
        files.cert_file.write_bytes(cert.cert_pem + chain)
    return str(files.cert_file), str(files.key_file)


def test_the_identity_carries_the_files_and_the_certificates_expiry(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cert = ca.issue_client_certificate("dev-01", validity=dt.timedelta(days=10))
    cert_file, key_file = write_pair(tmp_path, cert)
    provider = X509Files(cert_file=cert_file, key_file=key_file)
    assert isinstance(provider, CredentialProvider) and provider.renewable is True
    identity = provider.identity_for(hub(), client_id="ignored", after_refusal=False)
    assert (identity.cert_file, identity.key_file) == (cert_file, key_file)
    assert identity.expires_at == not_after(cert)
    assert identity.warn_at == not_after(cert) - 14 * DAY
    assert identity.renew_at is None  # no planned reconnect: the next attempt re-reads
    assert identity.password is None and identity.username is None
    assert identity.client_id is None  # the client's own id is used


def test_warn_before_and_a_chain_take_the_first_certificate(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cert = ca.issue_client_certificate("dev-01", validity=dt.timedelta(days=3))
    cert_file, key_file = write_pair(tmp_path, cert, chain=ca.cert_pem)
    provider = X509Files(cert_file=Path(cert_file), key_file=Path(key_file), warn_before=DAY)
    identity = provider.identity_for(hub(), client_id="dev-01", after_refusal=False)
    assert identity.expires_at == not_after(cert)  # the leaf's, not the CA's 90 days
    assert identity.warn_at == not_after(cert) - DAY


def test_the_subject_common_name_can_be_the_client_id(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cert = ca.issue_client_certificate("thermostat-7")
    cert_file, key_file = write_pair(tmp_path, cert)
    provider = X509Files(
        cert_file=cert_file, key_file=key_file, client_id_from_subject=True, username="u"
    )
    identity = identity_for_attempt(provider, hub(), client_id="config-id")
    assert identity.client_id == "thermostat-7"
    assert identity.username == "u"
    fixed = X509Files(cert_file=cert_file, key_file=key_file, client_id="fixed-id")
    assert identity_for_attempt(fixed, hub(), client_id="config-id").client_id == "fixed-id"


def test_a_rotated_certificate_is_picked_up_at_the_next_attempt(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    old = ca.issue_client_certificate("dev-01", validity=dt.timedelta(days=2))
    cert_file, key_file = write_pair(tmp_path, old)
    provider = X509Files(cert_file=cert_file, key_file=key_file, client_id_from_subject=True)
    first = provider.identity_for(hub(), client_id="x", after_refusal=False)
    assert first.expires_at == not_after(old)

    new = ca.issue_client_certificate("dev-02", validity=dt.timedelta(days=30))
    write_pair(tmp_path, new)  # same paths, new content
    second = provider.identity_for(hub(), client_id="x", after_refusal=False)
    assert second.expires_at == not_after(new) != first.expires_at
    assert second.client_id == "dev-02"


def test_an_expired_certificate_is_not_dialled(ca: CertificateAuthority, tmp_path: Path) -> None:
    cert = ca.issue_client_certificate("dev-01", validity=dt.timedelta(days=1))
    cert_file, key_file = write_pair(tmp_path, cert)
    provider = X509Files(cert_file=cert_file, key_file=key_file)
    with pytest.raises(CredentialExpired) as caught:
        identity_for_attempt(provider, hub(), client_id="dev-01", now=not_after(cert) + 60)
    assert caught.value.expires_at == not_after(cert)
    ok = identity_for_attempt(provider, hub(), client_id="dev-01", now=not_after(cert) - 60)
    assert ok.expires_at == not_after(cert)


def test_a_key_file_others_may_read_is_refused_clearly(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cert_file, key_file = write_pair(tmp_path, ca.issue_client_certificate("dev-01"))
    os.chmod(key_file, 0o644)
    provider = X509Files(cert_file=cert_file, key_file=key_file)
    with pytest.raises(CredentialError) as caught:
        provider.identity_for(hub(), client_id="dev-01", after_refusal=False)
    message = str(caught.value)
    assert "x509.key_file" in message and "0644" in message and "chmod go=" in message
    assert "PRIVATE KEY" not in message
    assert caught.value.hub == "a"


def test_missing_unreadable_or_wrong_files_are_credential_errors(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cert_file, key_file = write_pair(tmp_path, ca.issue_client_certificate("dev-01"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    huge = tmp_path / "huge.pem"
    huge.write_bytes(b"#" * (2 * 1024 * 1024))
    cases = [
        (str(tmp_path / "missing.crt"), key_file, "cannot be read"),
        (cert_file, str(tmp_path / "missing.key"), "cannot be read"),
        (str(tmp_path), key_file, "not a readable regular file"),
        (key_file, key_file, "does not hold a PEM certificate"),  # a key is not a certificate
        (str(garbage), key_file, "does not hold a PEM certificate"),
        (str(huge), key_file, "not a device certificate"),
    ]
    for cert_path, key_path, why in cases:
        provider = X509Files(cert_file=cert_path, key_file=key_path)
        with pytest.raises(CredentialError) as caught:
            provider.identity_for(hub(), client_id="dev-01", after_refusal=False)
        assert why in str(caught.value), (cert_path, key_path)


def test_a_certificate_without_a_common_name_cannot_name_the_client(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    # Self-signed, named by its organisation only.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "no cn")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file = tmp_path / "nocn.crt"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _, key_file = write_pair(tmp_path, ca.issue_client_certificate("dev-01"))
    provider = X509Files(cert_file=str(cert_file), key_file=key_file, client_id_from_subject=True)
    with pytest.raises(CredentialError, match="no subject common name"):
        provider.identity_for(hub(), client_id="dev-01", after_refusal=False)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cert_file": ""}, "x509.cert_file"),
        ({"key_file": "a\0b"}, "x509.key_file"),
        ({"cert_file": 7}, "x509.cert_file"),
        ({"warn_before": -1}, "x509.warn_before"),
        ({"warn_before": 400 * DAY}, "x509.warn_before"),
        ({"warn_before": True}, "x509.warn_before"),
        ({"client_id_from_subject": "yes"}, "x509.client_id_from_subject"),
        ({"client_id": "x", "client_id_from_subject": True}, "x509.client_id"),
        ({"client_id": ""}, "x509.client_id"),
        ({"username": "a\0b"}, "x509.username"),
    ],
)
def test_bad_settings_name_their_field(fields: dict[str, object], field: str) -> None:
    settings: dict[str, object] = {"cert_file": "/dev/c.crt", "key_file": "/dev/c.key", **fields}
    with pytest.raises(ConfigError) as caught:
        X509Files(**settings)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_the_repr_names_the_files_only(ca: CertificateAuthority, tmp_path: Path) -> None:
    cert = ca.issue_client_certificate("dev-01")
    cert_file, key_file = write_pair(tmp_path, cert)
    text = repr(X509Files(cert_file=cert_file, key_file=key_file))
    assert cert_file in text and key_file in text
    assert "PRIVATE" not in text and cert.key_pem.decode() not in text
