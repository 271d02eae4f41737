"""Firmware profiles: named, validated bundles of device behaviour, loaded from TOML.

A profile names *behaviour*: how to back off, when to fail over and come back,
how long the keepalive is, how much the outbox may hold. The deployment
supplies *identity*: the client id, the credentials and the hubs::

    profile = load_profile("cellular-low-data")
    credentials = profile.sas_credentials(key_file="/etc/meter/sas.key")
    config = profile.client_config(client_id="meter-17", hubs=hubs, credentials=credentials)

The profile says how long credentials live (``[identity]``: token life, renewal
margin, certificate expiry warning); :meth:`Profile.sas_credentials` and
:meth:`Profile.x509_credentials` build providers with those values.

Precedence, lowest first; each layer replaces single values of the ones before it:

1. built-in defaults (the defaults of the policy dataclasses);
2. the profiles named by ``extends``, the deepest base first;
3. the profile file itself;
4. environment variables ``DEVICE_SDK_<SECTION>_<KEY>``, for example
   ``DEVICE_SDK_RETRY_MAXIMUM=60``, parsed as the type the key expects;
5. explicit overrides: ``load_profile(..., overrides={"retry.maximum": 60})``.

Tables merge key by key (deep merge); an array replaces the whole array.
Every key is validated at load: an unknown section or key, a wrong TOML type (a
boolean is not an integer, a string is not a number) or an out-of-range value
raises :class:`~device_sdk.errors.ConfigError` naming the file, the dotted key,
the value and what is allowed. `Profile.origins` records where every resolved
value came from, for ``device-sdk profile show``. The keys are in
:mod:`device_sdk.profiles.schema`.

Where profiles are found: a bare name is looked up as ``<name>.toml`` in the
search path. By default that is the profiles that came with the package: inside
it (``device_sdk/firmware_profiles``) when installed from a wheel, or the
repository's top-level ``firmware_profiles/`` beside it when it runs from a
checkout (or an editable install of one). Pass ``search_path=``
(``--profile-dir`` on the command line) for profiles of your own, or a path to
a ``.toml`` file.
"""

from __future__ import annotations

import dataclasses
import os
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from device_sdk.config import (
    ClientConfig,
    DnsSettings,
    HubEndpoint,
    OutboxSettings,
    SrvSettings,
    TlsSettings,
)
from device_sdk.core.failover import FailoverPolicy
from device_sdk.core.liveness import LivenessPolicy
from device_sdk.core.retry import RetryPolicy
from device_sdk.core.supervision import SupervisionPolicy
from device_sdk.errors import ConfigError
from device_sdk.identity.provider import CredentialProvider
from device_sdk.identity.sas import DEFAULT_RESOURCE_TEMPLATE, SasTokenProvider
from device_sdk.profiles.schema import (
    SCHEMA,
    SECTIONS,
    TLS_VERSIONS,
    ConciergePolling,
    IdentityTiming,
    ProvisioningPacing,
    builtin_default,
    checked_value,
    field_value,
    one_of,
    parsed_value,
    shown,
)

if TYPE_CHECKING:  # these load cryptography; profiles need only the types
    from device_sdk.concierge.settings import ConciergeSettings
    from device_sdk.identity.x509 import X509Files
    from device_sdk.provisioning.settings import DpsSettings

__all__ = [
    "DEFAULT_ORIGIN",
    "ENV_PREFIX",
    "MAX_EXTENDS_DEPTH",
    "OVERRIDE_ORIGIN",
    "Profile",
    "available_profiles",
    "default_search_path",
    "env_variable",
    "find_profile",
    "load_profile",
    "parse_setting",
]

ENV_PREFIX = "DEVICE_SDK_"
DEFAULT_ORIGIN = "built-in default"
OVERRIDE_ORIGIN = "explicit override"
# Enough for base -> device class -> model -> site; deeper is a design smell, and a
# bound stops a runaway chain that the cycle check would not catch (distinct files).
MAX_EXTENDS_DEPTH = 8
_TOP_LEVEL = ("extends", "description")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """A resolved, validated profile: the policies it names and where each value came from.

    ``values`` maps every dotted key to its resolved TOML-level value and
    ``origins`` to what set it: a file path, ``environment DEVICE_SDK_...``,
    `OVERRIDE_ORIGIN` or `DEFAULT_ORIGIN`. ``chain`` lists the files, the
    deepest base first and this profile's own file last.
    """

    name: str
    source: str
    chain: tuple[str, ...]
    description: str
    retry: RetryPolicy
    failover: FailoverPolicy
    liveness: LivenessPolicy
    supervision: SupervisionPolicy
    dns: DnsSettings
    outbox: OutboxSettings
    concierge: ConciergePolling
    tls_min_version: Literal["1.2", "1.3"]
    tls_alpn_protocols: tuple[str, ...]
    identity: IdentityTiming
    provisioning: ProvisioningPacing
    mqtt_version: Literal["3.1.1", "5"]
    inflight_window: int
    publish_batch_delay: float
    session_expiry: int
    failback_probe_interval: float
    max_packet_size: int
    poison_after: int
    values: Mapping[str, object]
    origins: Mapping[str, str]

    def client_config(
        self,
        *,
        client_id: str,
        hubs: Sequence[HubEndpoint],
        credentials: CredentialProvider | None = None,
        concierge: ConciergeSettings | None = None,
        srv: SrvSettings | None = None,
        dps: DpsSettings | None = None,
        **overrides: Any,
    ) -> ClientConfig:
        """The full ClientConfig: this profile's behaviour, the deployment's identity and hubs.

        ``credentials`` is any credential provider: fixed Credentials, or one
        built with :meth:`sas_credentials` or :meth:`x509_credentials` so its
        token life and warnings are the profile's. ``tls.min_version`` is a floor
        for every TLS hub, SRV-discovered hubs and hubs a concierge adds (a hub
        may ask for more, never less); ``tls.alpn_protocols`` is offered to each
        of them that names no ALPN of its own. A
        ``concierge`` gets the profile's polling, and ``dps`` its pacing
        (``[provisioning]``) and TLS floor for the hub it assigns. ``overrides`` replace whole
        ClientConfig fields last, e.g. ``envelope=True``.
        """
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ClientConfig)})
        if unknown:
            raise ConfigError(unknown[0], overrides[unknown[0]], "a ClientConfig field name")
        config = ClientConfig(
            client_id=client_id,
            hubs=tuple(self._hub(hub) for hub in hubs),
            dns=self.dns,
            retry=self.retry,
            failover=self.failover,
            liveness=self.liveness,
            supervision=self.supervision,
            mqtt_version=self.mqtt_version,
            credentials=credentials,
            outbox=self.outbox,
            inflight_window=self.inflight_window,
            publish_batch_delay=self.publish_batch_delay,
            failback_probe_interval=self.failback_probe_interval,
            session_expiry=self.session_expiry,
            max_packet_size=self.max_packet_size,
            poison_after=self.poison_after,
            concierge=None if concierge is None else self._concierge(concierge),
            srv=None if srv is None else dataclasses.replace(srv, tls=self._tls(srv.tls)),
            dps=None if dps is None else self._dps(dps),
        )
        return dataclasses.replace(config, **overrides) if overrides else config

    def sas_credentials(
        self,
        *,
        key: str | None = None,
        key_file: str | None = None,
        key_callback: Callable[[bytes], bytes] | None = None,
        resource_template: str = DEFAULT_RESOURCE_TEMPLATE,
        username_template: str | None = None,
        policy: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> SasTokenProvider:
        """A SAS token provider living by this profile: ``identity.token_ttl`` and
        ``identity.renew_margin``. Exactly one of ``key``, ``key_file`` (re-read at
        every attempt) or ``key_callback``; the rest as :class:`SasTokenProvider`."""
        return SasTokenProvider(
            key=key,
            key_file=key_file,
            key_callback=key_callback,
            ttl=self.identity.token_ttl,
            renew_margin=self.identity.renew_margin,
            resource_template=resource_template,
            username_template=username_template,
            policy=policy,
            clock=clock,
        )

    def x509_credentials(
        self, cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str], **more: Any
    ) -> X509Files:
        """Certificate files for mutual TLS, warned about ``identity.expiry_warning``
        before they expire; ``more`` as :class:`~device_sdk.identity.x509.X509Files`
        (``client_id_from_subject``, ``client_id``, ``username``)."""
        if "warn_before" in more:
            raise ConfigError(
                "warn_before", more["warn_before"], "the profile's identity.expiry_warning"
            )
        # Imported here: the certificate parser costs a token-only device its import budget.
        from device_sdk.identity.x509 import X509Files

        return X509Files(
            cert_file=cert_file,
            key_file=key_file,
            warn_before=self.identity.expiry_warning,
            **more,
        )

    def _tls(self, tls: TlsSettings) -> TlsSettings:
        """``tls`` raised to the profile's minimum version, offering the profile's ALPN
        when it names none (a hub's own list wins: its dialect knows its endpoint)."""
        changes: dict[str, Any] = {}
        if TLS_VERSIONS.index(tls.min_version) < TLS_VERSIONS.index(self.tls_min_version):
            changes["min_version"] = self.tls_min_version
        if not tls.alpn_protocols and self.tls_alpn_protocols:
            changes["alpn_protocols"] = self.tls_alpn_protocols
        return dataclasses.replace(tls, **changes) if changes else tls

    def _hub(self, hub: HubEndpoint) -> HubEndpoint:
        # Plain MQTT (tls=None) stays plain: the hub list chose it (testbeds,
        # closed networks), and a profile cannot turn it into a TLS hub.
        return hub if hub.tls is None else dataclasses.replace(hub, tls=self._tls(hub.tls))

    def _dps(self, settings: DpsSettings) -> DpsSettings:
        paced = self.provisioning.apply(settings)
        hub_tls = None if settings.hub_tls is None else self._tls(settings.hub_tls)
        return dataclasses.replace(paced, hub_tls=hub_tls)

    def _concierge(self, settings: ConciergeSettings) -> ConciergeSettings:
        polled = self.concierge.apply(settings)
        return dataclasses.replace(polled, hub_tls=self._tls(settings.hub_tls))


# --------------------------------------------------------------------------- finding files


def default_search_path() -> tuple[Path, ...]:
    """The profiles that came with the package: the folder of the first layout that exists.

    A wheel carries them inside the package, as ``device_sdk/firmware_profiles``
    (pyproject.toml maps the top-level folder there). A checkout, or an editable
    install of one, keeps them in ``firmware_profiles/`` at the repository root,
    beside the package. Only one is used, so a name always means the profile
    that was shipped with the code that loads it. ``()`` when neither exists.
    """
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "firmware_profiles", package.parent / "firmware_profiles"):
        if folder.is_dir():
            return (folder,)
    return ()


def available_profiles(search_path: Iterable[Path | str] | None = None) -> dict[str, Path]:
    """Profile name -> file, for every ``*.toml`` in the search path (earlier folders win)."""
    found: dict[str, Path] = {}
    for folder in _folders(search_path):
        for file in sorted(folder.glob("*.toml")) if folder.is_dir() else ():
            found.setdefault(file.stem, file)
    return found


def find_profile(name_or_path: str | Path, search_path: Iterable[Path | str] | None = None) -> Path:
    """The file for a profile name (looked up in the search path) or a path to a .toml file."""
    text = str(name_or_path)
    candidate = Path(text)
    if candidate.suffix == ".toml" or len(candidate.parts) > 1:
        if candidate.is_file():
            return candidate
        raise ConfigError("profile", text, "an existing .toml file, or a profile name")
    folders = _folders(search_path)
    for folder in folders:
        if (folder / f"{text}.toml").is_file():
            return folder / f"{text}.toml"
    names = sorted(available_profiles(folders))
    where = ", ".join(str(folder) for folder in folders) or "no profile folder"
    raise ConfigError("profile", text, f"one of {names} in {where}, or a path to a .toml file")


def _folders(search_path: Iterable[Path | str] | None) -> tuple[Path, ...]:
    return default_search_path() if search_path is None else tuple(Path(p) for p in search_path)


def env_variable(dotted: str) -> str:
    """The variable overriding a key: ``retry.maximum`` -> ``DEVICE_SDK_RETRY_MAXIMUM``."""
    return ENV_PREFIX + dotted.replace(".", "_").upper()


# --------------------------------------------------------------------------- loading

# A layer maps dotted keys to (TOML-level value, origin).
_Layer = dict[str, tuple[object, str]]


@dataclass(frozen=True, slots=True)
class _File:
    path: Path
    layer: _Layer
    description: str


def load_profile(
    name_or_path: str | Path,
    *,
    search_path: Iterable[Path | str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Profile:
    """Load, merge and validate a profile; the module docstring gives the precedence.

    ``env=None`` reads ``os.environ``; pass ``{}`` to ignore the environment.
    ``overrides`` maps dotted keys to values of the key's TOML type.
    """
    folders = _folders(search_path)
    path = find_profile(name_or_path, folders)
    files = _read_chain(path, folders, ())
    source = str(path)
    layer: _Layer = {
        dotted: (builtin_default(key), DEFAULT_ORIGIN) for dotted, key in SCHEMA.items()
    }
    for file in files:
        layer.update(file.layer)
    layer.update(_env_layer(os.environ if env is None else env, source))
    layer.update(_override_layer(overrides or {}, source))
    description = next((f.description for f in reversed(files) if f.description), "")
    chain = tuple(str(file.path) for file in files)
    return _build(name=path.stem, source=source, chain=chain, description=description, layer=layer)


def _read_chain(path: Path, folders: tuple[Path, ...], seen: tuple[Path, ...]) -> list[_File]:
    """``path`` and the profiles it extends, the deepest base first."""
    resolved = path.resolve()
    if resolved in seen:
        cycle = " -> ".join(p.name for p in (*seen, resolved))
        raise ConfigError("extends", path.stem, f"a profile that is not extended already: {cycle}")
    if len(seen) >= MAX_EXTENDS_DEPTH:
        raise ConfigError("extends", path.stem, f"at most {MAX_EXTENDS_DEPTH} levels of extends")
    data = _read_toml(path)
    file = _File(path, _file_layer(path, data), data.get("description", ""))
    extends = data.get("extends")
    if extends is None:
        return [file]
    # A name is looked up beside this file first; a .toml path is relative to this file.
    target = path.parent / extends if extends.endswith(".toml") else extends
    try:
        base = find_profile(target, (path.parent, *folders))
        return [*_read_chain(base, folders, (*seen, resolved)), file]
    except ConfigError as exc:
        if exc.source:
            raise
        raise ConfigError("extends", extends, exc.allowed, source=str(path)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("profile", str(path), f"a readable UTF-8 file ({exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(syntax)", str(exc), "TOML (toml.io)", source=str(path)) from None


def _file_layer(path: Path, data: Mapping[str, Any]) -> _Layer:
    """One file's values, with its structure and every value's type checked."""
    source = str(path)
    layer: _Layer = {}
    for name, value in data.items():
        if name in _TOP_LEVEL:
            if not isinstance(value, str) or not value:
                raise ConfigError(name, value, "a non-empty string", source=source)
        elif name not in SECTIONS:
            allowed = one_of(name, (*SECTIONS, *_TOP_LEVEL), "sections and top-level keys")
            raise ConfigError(name, shown(value), allowed, source=source)
        elif not isinstance(value, dict):
            raise ConfigError(name, value, f"a table, [{name}]", source=source)
        else:
            for key, item in value.items():
                layer[f"{name}.{key}"] = (checked_value(f"{name}.{key}", item, source), source)
    return layer


def _env_layer(env: Mapping[str, str], source: str) -> _Layer:
    """``DEVICE_SDK_<SECTION>_<KEY>`` variables. Other ``DEVICE_SDK_*`` names are not ours;
    a misspelt key under a known section is an error, not silently ignored."""
    layer: _Layer = {}
    for variable, text in env.items():
        rest = variable[len(ENV_PREFIX) :].lower() if variable.startswith(ENV_PREFIX) else ""
        section = next((s for s in SECTIONS if rest.startswith(f"{s}_")), None)
        if section is not None:
            dotted = f"{section}.{rest[len(section) + 1 :]}"
            where = f"{source} (environment variable {variable})"
            layer[dotted] = (parsed_value(dotted, text, where), f"environment {variable}")
    return layer


def _override_layer(overrides: Mapping[str, object], source: str) -> _Layer:
    return {
        dotted: (checked_value(dotted, value, f"{source} ({OVERRIDE_ORIGIN})"), OVERRIDE_ORIGIN)
        for dotted, value in overrides.items()
    }


def parse_setting(text: str) -> tuple[str, object]:
    """``"retry.maximum=60"`` -> ``("retry.maximum", 60.0)``, typed as the key expects.

    For command lines (``--set``): the value is parsed as an environment variable's is.
    """
    dotted, sep, value = text.partition("=")
    if not sep:
        raise ConfigError("--set", text, "KEY=VALUE, e.g. retry.maximum=60")
    return dotted.strip(), parsed_value(dotted.strip(), value.strip(), "--set")


# --------------------------------------------------------------------------- building


def _build(
    *, name: str, source: str, chain: tuple[str, ...], description: str, layer: _Layer
) -> Profile:
    """Build the policy values. Their own validation runs, re-raised with file and key."""
    values = {dotted: value for dotted, (value, _) in layer.items()}
    origins = {dotted: origin for dotted, (_, origin) in layer.items()}

    def build(owner: type[_T], **fixed: Any) -> _T:
        fields = {k.field: field_value(k, values[d]) for d, k in SCHEMA.items() if k.owner is owner}
        try:
            return owner(**fixed, **fields)
        except ConfigError as exc:
            raise _located(exc, owner, origins, source) from None

    # Why a throwaway ClientConfig: the rules for these fields live in its
    # __post_init__, and a copy here would drift. Its id and hub are never used.
    placeholder = HubEndpoint(name="profile-check", fqdn="profile-check.invalid", tls=None)
    client = build(ClientConfig, client_id="profile-check", hubs=(placeholder,))
    tls = build(TlsSettings)
    return Profile(
        name=name,
        source=source,
        chain=chain,
        description=description,
        retry=build(RetryPolicy),
        failover=build(FailoverPolicy),
        liveness=build(LivenessPolicy),
        supervision=build(SupervisionPolicy),
        dns=build(DnsSettings),
        outbox=build(OutboxSettings),
        concierge=build(ConciergePolling),
        tls_min_version=tls.min_version,
        tls_alpn_protocols=tls.alpn_protocols,
        identity=build(IdentityTiming),
        provisioning=build(ProvisioningPacing),
        mqtt_version=client.mqtt_version,
        inflight_window=client.inflight_window,
        publish_batch_delay=client.publish_batch_delay,
        session_expiry=client.session_expiry,
        failback_probe_interval=client.failback_probe_interval,
        max_packet_size=client.max_packet_size,
        poison_after=client.poison_after,
        values=MappingProxyType(values),
        origins=MappingProxyType(origins),
    )


def _located(exc: ConfigError, owner: type, origins: Mapping[str, str], source: str) -> ConfigError:
    """``exc`` with the dotted key, and the file (or variable) that set the bad value."""
    dotted = _dotted_key(owner, exc.field)
    key = SCHEMA.get(dotted)
    value = key.none_as if key is not None and exc.value is None else exc.value
    return ConfigError(dotted, value, exc.allowed, source=_source_of(origins.get(dotted), source))


def _dotted_key(owner: type, field: str) -> str:
    """The profile key for an owner's error field ("retry.maximum", "inflight_window")."""
    for dotted, key in SCHEMA.items():
        section = dotted.split(".")[0]
        if key.owner is owner and field in (dotted, key.field, f"{section}.{key.field}"):
            return dotted
    return field


def _source_of(origin: str | None, top: str) -> str:
    """The file to name in an error: the value's own file, or the profile and how it was set."""
    if origin is None or origin in (DEFAULT_ORIGIN, OVERRIDE_ORIGIN):
        return f"{top} ({origin or DEFAULT_ORIGIN})"
    if origin.startswith("environment "):
        return f"{top} ({origin})"
    return origin
