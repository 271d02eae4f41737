"""Identity as a step of the recovery path: what a provider gives becomes a checked
Identity or a CredentialError, and the engine's renewal and refusal rules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from device_sdk import Credentials, HubEndpoint
from device_sdk.core.outcomes import FailureKind, refusal_kind
from device_sdk.engine.renewal import RenewalPlan
from device_sdk.errors import ConfigError, CredentialError, CredentialExpired
from device_sdk.identity import CallableCredentials, Identity, identity_for_attempt

NOW = 1_800_000_000.0
SECRET = "s3cr3t-token-value"


def hub(**fields: object) -> HubEndpoint:
    return HubEndpoint(name="a", fqdn="hub-a.example.test.", port=8883, tls=None, **fields)  # type: ignore[arg-type]


def fixed(identity: Identity) -> CallableCredentials:
    return CallableCredentials(lambda _hub, _refused: identity)


# -- who is asked, and what fills the gaps ---------------------------------------------------


def test_no_provider_gives_an_anonymous_identity_with_the_client_id() -> None:
    identity = identity_for_attempt(None, hub(), client_id="dev-1", now=NOW)
    assert identity == Identity(client_id="dev-1")


def test_fixed_credentials_are_a_provider() -> None:
    creds = Credentials(username="u", password=SECRET)
    identity = identity_for_attempt(creds, hub(), client_id="dev-1", now=NOW)
    assert (identity.username, identity.password, identity.client_id) == ("u", SECRET, "dev-1")
    assert creds.renewable is False


def test_the_hubs_own_provider_and_client_id_win_over_the_clients() -> None:
    own = fixed(Identity(username="hub-user", password="p"))
    chosen = identity_for_attempt(
        Credentials(username="client-user"),
        hub(credentials=own, client_id="dev-on-a"),
        client_id="dev-1",
        now=NOW,
    )
    assert (chosen.username, chosen.client_id) == ("hub-user", "dev-on-a")


def test_the_identitys_client_id_wins_over_the_hubs() -> None:
    chosen = identity_for_attempt(
        fixed(Identity(client_id="from-provider")), hub(client_id="dev-on-a"), client_id="x"
    )
    assert chosen.client_id == "from-provider"


def test_a_username_template_fills_a_missing_user_name_per_hub() -> None:
    template = "{fqdn}/{client_id}/?api-version=2021-04-12&h={hub}"
    chosen = identity_for_attempt(
        fixed(Identity(password="p")), hub(username=template), client_id="dev-1", now=NOW
    )
    assert chosen.username == "hub-a.example.test/dev-1/?api-version=2021-04-12&h=a"
    given = identity_for_attempt(
        fixed(Identity(username="given")), hub(username=template), client_id="d", now=NOW
    )
    assert given.username == "given"


def test_a_template_with_an_unknown_field_fails_the_attempt_not_the_engine() -> None:
    with pytest.raises(CredentialError, match="template"):
        identity_for_attempt(None, hub(username="{nope}"), client_id="d", now=NOW)


def test_the_provider_is_told_when_the_hub_refused_the_last_identity() -> None:
    seen: list[bool] = []

    def fetch(_hub: HubEndpoint, after_refusal: bool) -> Identity:
        seen.append(after_refusal)
        return Identity()

    for refused in (False, True):
        identity_for_attempt(
            CallableCredentials(fetch), hub(), client_id="d", after_refusal=refused
        )
    assert seen == [False, True]


# -- what a provider gives is checked, and its faults contained ------------------------------


def test_a_provider_that_raises_gives_a_credential_error_without_its_text() -> None:
    def fetch(_hub: HubEndpoint, _refused: bool) -> Identity:
        raise RuntimeError(f"vault said no to {SECRET}")

    with pytest.raises(CredentialError) as caught:
        identity_for_attempt(CallableCredentials(fetch), hub(), client_id="d", now=NOW)
    assert SECRET not in str(caught.value) and "RuntimeError" in str(caught.value)
    assert caught.value.hub == "a"
    assert isinstance(caught.value.__cause__, RuntimeError)  # kept for the log's traceback


def test_a_provider_returning_something_else_is_refused() -> None:
    provider = CallableCredentials(lambda _h, _r: ("user", SECRET))  # type: ignore[arg-type,return-value]
    with pytest.raises(CredentialError, match="not an Identity") as caught:
        identity_for_attempt(provider, hub(), client_id="d", now=NOW)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "identity",
    [
        Identity(username="bad\0name"),
        Identity(username=f"u?x-amz-customauthorizer-name=a&token={SECRET}\0"),
        Identity(client_id="x" * 70_000),
        Identity(password="\udc80" + SECRET),
        Identity(password=SECRET * 5000),
        Identity(password=b"bytes"),  # type: ignore[arg-type]
        Identity(expires_at=math.nan),
        Identity(renew_at="soon"),  # type: ignore[arg-type]
    ],
)
def test_an_unusable_identity_is_a_credential_error_that_never_shows_the_secret(
    identity: Identity,
) -> None:
    with pytest.raises(CredentialError) as caught:
        identity_for_attempt(fixed(identity), hub(), client_id="d", now=NOW)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None or SECRET not in str(caught.value.__cause__)


def test_an_expired_identity_is_not_dialled() -> None:
    with pytest.raises(CredentialExpired, match="expired 10 s ago") as caught:
        identity_for_attempt(fixed(Identity(expires_at=NOW - 10)), hub(), client_id="d", now=NOW)
    assert caught.value.expires_at == NOW - 10
    valid = identity_for_attempt(fixed(Identity(expires_at=NOW + 1)), hub(), client_id="d", now=NOW)
    assert valid.expires_at == NOW + 1


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("cert")
    key.write_text("key")
    key.chmod(0o640)
    identity = Identity(cert_file=str(cert), key_file=str(key))
    with pytest.raises(CredentialError, match="0640"):
        identity_for_attempt(fixed(identity), hub(), client_id="d", now=NOW)
    key.chmod(0o600)
    assert identity_for_attempt(fixed(identity), hub(), client_id="d").key_file == str(key)
    with pytest.raises(CredentialError, match="go together"):
        identity_for_attempt(fixed(Identity(cert_file=str(cert))), hub(), client_id="d")
    with pytest.raises(CredentialError, match="cannot be read"):
        identity_for_attempt(
            fixed(Identity(cert_file=str(tmp_path / "gone"), key_file=str(key))),
            hub(),
            client_id="d",
        )


def test_a_password_never_appears_in_reprs() -> None:
    assert SECRET not in repr(Identity(password=SECRET))
    assert SECRET not in repr(Identity(username=f"u?token={SECRET}"))  # AWS authorizers
    assert SECRET not in repr(Credentials(username="u", password=SECRET))


def test_hub_identity_fields_are_validated() -> None:
    with pytest.raises(ConfigError, match="client_id"):
        hub(client_id="")
    with pytest.raises(ConfigError, match="username"):
        hub(username="a\0b")
    with pytest.raises(ConfigError, match="CredentialProvider"):
        hub(credentials="user:password")


def test_a_world_readable_tls_key_file_is_refused_at_config(tmp_path: Path) -> None:
    from device_sdk import TlsSettings

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("c")
    key.write_text("k")
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="only its owner may read"):
        TlsSettings(client_cert_file=str(cert), client_key_file=str(key))


# -- a refused identity is renewed once before the hub is shunned ----------------------------


@pytest.mark.parametrize(
    ("code", "renewable", "refused_fresh", "expected"),
    [
        (0x87, True, False, FailureKind.TRANSIENT),  # not authorized: renew, retry
        (0x86, True, False, FailureKind.TRANSIENT),  # bad user name or password: renew, retry
        (0x87, True, True, FailureKind.PERMANENT),  # refused a fresh one too: shun
        (0x87, False, False, FailureKind.PERMANENT),  # a fixed password will not change
        (0x8A, True, False, FailureKind.PERMANENT),  # banned: no renewal helps
        (0x85, True, False, FailureKind.PERMANENT),  # client identifier not valid
    ],
)
def test_refusal_kind(
    code: int, renewable: bool, refused_fresh: bool, expected: FailureKind
) -> None:
    kind = refusal_kind(
        FailureKind.PERMANENT, reason_code=code, renewable=renewable, refused_fresh=refused_fresh
    )
    assert kind is expected


def test_refusal_kind_leaves_other_kinds_alone() -> None:
    for kind in (FailureKind.TRANSIENT, FailureKind.REDIRECT, FailureKind.UNRESPONSIVE):
        assert refusal_kind(kind, reason_code=0x87, renewable=True, refused_fresh=False) is kind


# -- the renewal plan converts wall-clock times once, and retries before expiry --------------


def test_renewal_plan_converts_wall_clock_times_to_the_engines_clock() -> None:
    plan = RenewalPlan()
    identity = Identity(expires_at=NOW + 100, renew_at=NOW + 90, warn_at=NOW + 50)
    plan.plan(identity, mono=5.0, wall=NOW)
    assert plan.next_due() == 55.0
    assert plan.warning_due(54.9) is None
    assert plan.warning_due(55.0) == NOW + 100
    assert plan.warning_due(60.0) is None  # announced once
    assert plan.next_due() == 95.0
    assert not plan.renewal_due(94.9) and plan.renewal_due(95.0)


def test_a_failed_renewal_is_retried_before_the_expiry_within_bounds() -> None:
    plan = RenewalPlan()
    plan.plan(Identity(expires_at=NOW + 100, renew_at=NOW + 90), mono=0.0, wall=NOW)
    plan.postpone(90.0)  # 10 s left: retry in 2.5 s
    assert plan.next_due() == pytest.approx(92.5)
    plan.postpone(99.9)  # almost expired: at least 1 s
    assert plan.next_due() == pytest.approx(100.9)
    plan.plan(Identity(expires_at=NOW + 10_000, renew_at=NOW + 10), mono=0.0, wall=NOW)
    plan.postpone(10.0)  # hours left: at most a minute
    assert plan.next_due() == pytest.approx(70.0)


def test_no_identity_or_no_times_plans_nothing() -> None:
    plan = RenewalPlan()
    plan.plan(None, mono=0.0, wall=NOW)
    assert plan.next_due() == math.inf and not plan.renewal_due(1e12)
    plan.plan(Identity(), mono=0.0, wall=NOW)
    assert plan.next_due() == math.inf and plan.warning_due(1e12) is None


def test_a_renewal_already_due_waits_a_second_instead_of_looping() -> None:
    plan = RenewalPlan()
    plan.plan(Identity(expires_at=NOW + 5, renew_at=NOW - 30), mono=10.0, wall=NOW)
    assert not plan.renewal_due(10.5) and plan.renewal_due(11.0)


def test_refused_identities_ask_fresh_once_then_call_the_refusal_final() -> None:
    from device_sdk.engine.renewal import RefusedIdentities

    refused = RefusedIdentities()
    permanent = FailureKind.PERMANENT
    assert not refused.ask_fresh("a")
    assert refused.classify("a", permanent, reason_code=0x87, renewable=True) == (
        FailureKind.TRANSIENT,
        False,
    )
    assert refused.ask_fresh("a") and not refused.ask_fresh("b")
    assert refused.classify("a", permanent, reason_code=0x87, renewable=True) == (permanent, True)
    refused.connected("a")
    assert not refused.ask_fresh("a")
    # Not a credentials refusal: nothing to renew, nothing remembered.
    assert refused.classify("a", permanent, reason_code=0x8A, renewable=True) == (permanent, False)
    assert not refused.ask_fresh("a")
    # An expiry or a not-authorised DISCONNECT counts as a refusal of the identity.
    refused.refused("b")
    assert refused.classify("b", permanent, reason_code=0x86, renewable=True) == (permanent, True)


def test_a_plain_class_is_a_provider_when_it_has_identity_for_and_a_bool_renewable() -> None:
    class VaultTokens:
        def __init__(self) -> None:
            self.renewable = True  # an instance attribute, not a property

        def identity_for(
            self, hub: HubEndpoint, *, client_id: str, after_refusal: bool
        ) -> Identity:
            return Identity(password="from-the-vault")

    chosen = identity_for_attempt(None, hub(credentials=VaultTokens()), client_id="d", now=NOW)
    assert chosen.password == "from-the-vault"

    class NoRenewable:
        def identity_for(
            self, hub: HubEndpoint, *, client_id: str, after_refusal: bool
        ) -> Identity:
            return Identity()

    with pytest.raises(ConfigError, match="renewable"):
        hub(credentials=NoRenewable())
