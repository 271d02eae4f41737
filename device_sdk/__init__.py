"""device_sdk: keep a device connected to its cloud hub through outages and failovers,
and never lose the telemetry it was handed."""

from typing import TYPE_CHECKING

from device_sdk import events
from device_sdk.client import DeviceClient
from device_sdk.config import (
    Birth,
    ClientConfig,
    Credentials,
    DnsSettings,
    HubEndpoint,
    OutboxSettings,
    SrvSettings,
    TlsSettings,
    Will,
)
from device_sdk.core.failover import FailoverPolicy
from device_sdk.core.liveness import LivenessPolicy
from device_sdk.core.retry import RetryPolicy
from device_sdk.core.supervision import SupervisionPolicy
from device_sdk.errors import (
    ClientClosed,
    ConfigError,
    ConnectError,
    ConnectRefused,
    ConnectTimeout,
    CredentialError,
    CredentialExpired,
    DeviceSDKError,
    DialError,
    EngineFailed,
    LinkLost,
    MessageExpired,
    MessageNotDeliverable,
    MessageTooLarge,
    NameNotFound,
    NoAddress,
    NotConnected,
    OutboxFull,
    PermanentRefusal,
    PoisonMessage,
    ProtocolError,
    ProvisioningError,
    ProvisioningFailed,
    ProvisioningRefused,
    ProvisioningUnavailable,
    ProxyError,
    ProxyProtocolError,
    ProxyRefused,
    ProxyTimeout,
    PublishError,
    PublishRejected,
    QosNotSupported,
    RecoveryFailed,
    Redirected,
    ResolveError,
    ResolverFailure,
    ResolveTimeout,
    RetainNotSupported,
    StateMachineError,
    TestbedError,
    TlsError,
    TransientRefusal,
)
from device_sdk.identity import (
    CallableCredentials,
    CredentialProvider,
    Identity,
    SasTokenProvider,
    derive_device_key,
)
from device_sdk.message import Message, PublishProperties
from device_sdk.metrics import Metrics
from device_sdk.outbox import MemoryOutbox, Outbox, PublishHandle
from device_sdk.transports import ProxySettings, Transport

if TYPE_CHECKING:
    from device_sdk.aio import AsyncDeviceClient
    from device_sdk.identity.x509 import X509Files

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The asyncio face loads asyncio, about an eighth of this package's import time,
    # which a synchronous gateway never needs: it is imported on first use.
    if name == "AsyncDeviceClient":
        from device_sdk.aio import AsyncDeviceClient

        return AsyncDeviceClient
    if name == "X509Files":  # parses certificates with cryptography: loaded on first use
        from device_sdk.identity.x509 import X509Files

        return X509Files
    raise AttributeError(f"module 'device_sdk' has no attribute {name!r}")


__all__ = [
    "AsyncDeviceClient",
    "Birth",
    "CallableCredentials",
    "ClientClosed",
    "ClientConfig",
    "ConfigError",
    "ConnectError",
    "ConnectRefused",
    "ConnectTimeout",
    "CredentialError",
    "CredentialExpired",
    "CredentialProvider",
    "Credentials",
    "DeviceClient",
    "DeviceSDKError",
    "DialError",
    "DnsSettings",
    "EngineFailed",
    "FailoverPolicy",
    "HubEndpoint",
    "Identity",
    "LinkLost",
    "LivenessPolicy",
    "MemoryOutbox",
    "Message",
    "MessageExpired",
    "MessageNotDeliverable",
    "MessageTooLarge",
    "Metrics",
    "NameNotFound",
    "NoAddress",
    "NotConnected",
    "Outbox",
    "OutboxFull",
    "OutboxSettings",
    "PermanentRefusal",
    "PoisonMessage",
    "ProtocolError",
    "ProvisioningError",
    "ProvisioningFailed",
    "ProvisioningRefused",
    "ProvisioningUnavailable",
    "ProxyError",
    "ProxyProtocolError",
    "ProxyRefused",
    "ProxySettings",
    "ProxyTimeout",
    "PublishError",
    "PublishHandle",
    "PublishProperties",
    "PublishRejected",
    "QosNotSupported",
    "RecoveryFailed",
    "Redirected",
    "ResolveError",
    "ResolveTimeout",
    "ResolverFailure",
    "RetainNotSupported",
    "RetryPolicy",
    "SasTokenProvider",
    "SrvSettings",
    "StateMachineError",
    "SupervisionPolicy",
    "TestbedError",
    "TlsError",
    "TlsSettings",
    "TransientRefusal",
    "Transport",
    "Will",
    "X509Files",
    "__version__",
    "derive_device_key",
    "events",
]
