"""What a credential provider is, and the one function that asks it for an attempt.

Why asked on every attempt: a token minted at start-up expires during a long
outage, a certificate is rotated in place, and a failover to another hub needs
another user name (Azure IoT Hub's holds the hub's host name). Asking the
provider each time, with the hub being dialled, makes all three need no
restart, as resolving the FQDN on every attempt makes DNS flips need none.

:func:`identity_for_attempt` is the boundary: whatever a provider returns or
raises becomes an :class:`Identity` that is safe to put on the wire, or a
:class:`~device_sdk.errors.CredentialError` that fails this attempt (and is
retried under the normal backoff). An application's provider can never end
the engine thread, and its secrets never reach an error message.
"""

from __future__ import annotations

import math
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from device_sdk.core.topics import MAX_STRING_BYTES, check_mqtt_string
from device_sdk.errors import ConfigError, CredentialError, CredentialExpired

if TYPE_CHECKING:
    from device_sdk.config import HubEndpoint


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """Who the device is for one connect attempt to one hub.

    Times are wall-clock seconds (``time.time()``), as tokens and certificates
    state them. ``renew_at`` asks the engine to reconnect with a fresh identity
    at that time, make before break (a SAS token or JWT a hub will drop the link
    at); ``None`` means no planned reconnect (a certificate: a rotated file is
    picked up at the next attempt). ``warn_at`` is when a
    :class:`~device_sdk.events.CredentialExpiring` event is due. The password
    never appears in reprs, logs, events or error messages.
    """

    # Hidden from reprs too: an AWS custom authorizer carries its token in the user name.
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    client_id: str | None = None  # None: the hub's client id, else the client's
    cert_file: str | None = None  # client certificate (mutual TLS), read at this attempt
    key_file: str | None = None
    expires_at: float | None = None
    renew_at: float | None = None
    warn_at: float | None = None


@runtime_checkable
class CredentialProvider(Protocol):
    """Gives the identity for one attempt to one hub; asked before every attempt.

    ``renewable`` says whether asking again can give credentials the hub has not
    seen yet (a token provider can; a fixed password cannot). When it can, a hub
    that answers "bad credentials" or "not authorised" is asked again with a
    fresh identity under the normal backoff, instead of being shunned.
    ``after_refusal`` is True on the first attempt after such an answer: a
    provider that caches a token must fetch a new one then.
    """

    @property
    def renewable(self) -> bool: ...

    def identity_for(
        self, hub: HubEndpoint, *, client_id: str, after_refusal: bool
    ) -> Identity: ...


class CallableCredentials:
    """A provider backed by an application callable: JWTs, custom tokens, a vault.

    ``fetch(hub, after_refusal)`` returns an :class:`Identity` (with its
    ``expires_at`` and, for a token the hub drops the link at, ``renew_at``).
    It runs on the engine thread before each attempt, so it should be quick or
    bounded; whatever it raises fails that attempt as a CredentialError.
    """

    __slots__ = ("_fetch", "_renewable")

    def __init__(
        self, fetch: Callable[[HubEndpoint, bool], Identity], *, renewable: bool = True
    ) -> None:
        if not callable(fetch):
            raise ConfigError("credentials", fetch, "a callable (hub, after_refusal) -> Identity")
        self._fetch = fetch
        self._renewable = bool(renewable)

    @property
    def renewable(self) -> bool:
        return self._renewable

    def identity_for(self, hub: HubEndpoint, *, client_id: str, after_refusal: bool) -> Identity:
        return self._fetch(hub, after_refusal)

    def __repr__(self) -> str:
        return f"CallableCredentials({getattr(self._fetch, '__qualname__', 'fetch')})"


def identity_for_attempt(
    provider: CredentialProvider | None,
    hub: HubEndpoint,
    *,
    client_id: str,
    after_refusal: bool = False,
    now: float | None = None,
) -> Identity:
    """The identity to dial ``hub`` with now, complete and checked.

    The hub's own provider wins over the client's ``provider``; the client id is
    the identity's, else the hub's, else ``client_id``; a hub's user-name
    template fills a user name the provider left out. Raises CredentialError
    (the provider failed or gave something unusable) or CredentialExpired.
    """
    wall = time.time() if now is None else now
    chosen = hub.credentials if hub.credentials is not None else provider
    chosen_id = hub.client_id or client_id
    if chosen is None:
        identity = Identity()
    else:
        identity = _ask(chosen, hub, client_id=chosen_id, after_refusal=after_refusal)
    identity = replace(identity, client_id=identity.client_id or chosen_id)
    if identity.username is None and hub.username is not None:
        identity = replace(identity, username=_fill_template(hub, identity))
    _check(hub, identity, wall)
    return identity


def _ask(
    provider: CredentialProvider, hub: HubEndpoint, *, client_id: str, after_refusal: bool
) -> Identity:
    try:
        identity = provider.identity_for(hub, client_id=client_id, after_refusal=after_refusal)
    except CredentialError as exc:
        exc.hub = exc.hub or hub.name
        raise
    except Exception as exc:
        # The provider's own message may quote the secret it failed on: only its type
        # is shown, and the cause is kept for the log's traceback, not for the text.
        raise CredentialError(
            f"the credential provider for {hub.name} raised {type(exc).__name__}", hub=hub.name
        ) from exc
    if not isinstance(identity, Identity):
        raise CredentialError(
            f"the credential provider for {hub.name} returned a {type(identity).__name__}, "
            "not an Identity",
            hub=hub.name,
        )
    return identity


def _fill_template(hub: HubEndpoint, identity: Identity) -> str:
    template = hub.username or ""
    try:
        return template.format(
            fqdn=hub.fqdn.rstrip("."), hub=hub.name, client_id=identity.client_id
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise CredentialError(
            f"the user-name template of {hub.name} cannot be filled: {type(exc).__name__} {exc}",
            hub=hub.name,
        ) from None


def _check(hub: HubEndpoint, identity: Identity, wall: float) -> None:
    try:
        check_mqtt_string("identity.client_id", identity.client_id)
        if identity.username is not None:
            try:
                check_mqtt_string("identity.username", identity.username, allow_empty=True)
            except ConfigError as exc:  # a user name may carry a token: never quote it
                problem = exc.allowed
            else:
                problem = ""
            if problem:
                raise ConfigError("identity.username", "<hidden>", problem)
        for name in ("expires_at", "renew_at", "warn_at"):
            value = getattr(identity, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value)
            ):
                raise ConfigError(f"identity.{name}", value, "wall-clock seconds or None")
    except ConfigError as exc:
        raise CredentialError(f"unusable identity for {hub.name}: {exc}", hub=hub.name) from None
    _check_password(hub, identity.password)
    for name in ("cert_file", "key_file"):
        path = getattr(identity, name)
        if path is not None:
            check_private_file(f"identity.{name}", path, private=name == "key_file", hub=hub.name)
    if (identity.cert_file is None) != (identity.key_file is None):
        raise CredentialError(
            f"unusable identity for {hub.name}: cert_file and key_file go together", hub=hub.name
        )
    if identity.expires_at is not None and identity.expires_at <= wall:
        raise CredentialExpired(
            f"the credentials for {hub.name} expired {wall - identity.expires_at:.0f} s ago",
            hub=hub.name,
            expires_at=identity.expires_at,
        )


def _check_password(hub: HubEndpoint, password: object) -> None:
    if password is None:
        return
    problem = ""
    if not isinstance(password, str):
        problem = f"a password must be a str, not {type(password).__name__}"
    else:
        try:
            if len(password.encode("utf-8")) > MAX_STRING_BYTES:
                problem = f"the password is over {MAX_STRING_BYTES} bytes"
        except UnicodeEncodeError:
            problem = "the password is not encodable as UTF-8"
    if problem:  # raised outside any handler: nothing chains to the value
        raise CredentialError(f"unusable identity for {hub.name}: {problem}", hub=hub.name)


def check_private_file(field_name: str, path: object, *, private: bool, hub: str = "") -> None:
    """``path`` is a readable regular file; with ``private``, no group or other bits.

    Why refuse a key file others may read: a device's private key or SAS key
    that any local account can copy is an identity any local account can use.
    ssh refuses such keys for the same reason. Raises CredentialError.
    """
    if not isinstance(path, str) or not path or "\0" in path:
        raise CredentialError(f"{field_name} is not a file path", hub=hub)
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:  # ValueError: a name the file system cannot encode
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise CredentialError(f"{field_name} {path!r} cannot be read: {reason}", hub=hub) from None
    if not stat.S_ISREG(info.st_mode) or not os.access(path, os.R_OK):
        raise CredentialError(f"{field_name} {path!r} is not a readable regular file", hub=hub)
    if private and info.st_mode & 0o077:
        raise CredentialError(
            f"{field_name} {path!r} may be read by group or others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); allowed: 0600 or 0400 (chmod go= {path})",
            hub=hub,
        )
