"""device_sdk: keep a device connected to its cloud hub through outages and failovers,
and never lose the telemetry it was handed."""

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from device_sdk import events
    from device_sdk.aio import AsyncDeviceClient
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
    from device_sdk.identity.x509 import X509Files
    from device_sdk.message import Message, PublishProperties
    from device_sdk.metrics import Metrics
    from device_sdk.outbox import MemoryOutbox, Outbox, PublishHandle
    from device_sdk.transports import ProxySettings, Transport

__version__ = "0.1.0"

# Every public name is imported on first use (PEP 562), so ``import device_sdk`` costs
# next to nothing and a program loads only the rooms it touches: a synchronous gateway
# never loads the asyncio face, a token-signed device never loads cryptography, a client
# without the durable outbox never loads sqlite3. The table maps each name to its module.
_HOMES = {
    "DeviceClient": "device_sdk.client",
    "Birth": "device_sdk.config",
    "ClientConfig": "device_sdk.config",
    "Credentials": "device_sdk.config",
    "DnsSettings": "device_sdk.config",
    "HubEndpoint": "device_sdk.config",
    "OutboxSettings": "device_sdk.config",
    "SrvSettings": "device_sdk.config",
    "TlsSettings": "device_sdk.config",
    "Will": "device_sdk.config",
    "FailoverPolicy": "device_sdk.core.failover",
    "LivenessPolicy": "device_sdk.core.liveness",
    "RetryPolicy": "device_sdk.core.retry",
    "SupervisionPolicy": "device_sdk.core.supervision",
    "ClientClosed": "device_sdk.errors",
    "ConfigError": "device_sdk.errors",
    "ConnectError": "device_sdk.errors",
    "ConnectRefused": "device_sdk.errors",
    "ConnectTimeout": "device_sdk.errors",
    "CredentialError": "device_sdk.errors",
    "CredentialExpired": "device_sdk.errors",
    "DeviceSDKError": "device_sdk.errors",
    "DialError": "device_sdk.errors",
    "EngineFailed": "device_sdk.errors",
    "LinkLost": "device_sdk.errors",
    "MessageExpired": "device_sdk.errors",
    "MessageNotDeliverable": "device_sdk.errors",
    "MessageTooLarge": "device_sdk.errors",
    "NameNotFound": "device_sdk.errors",
    "NoAddress": "device_sdk.errors",
    "NotConnected": "device_sdk.errors",
    "OutboxFull": "device_sdk.errors",
    "PermanentRefusal": "device_sdk.errors",
    "PoisonMessage": "device_sdk.errors",
    "ProtocolError": "device_sdk.errors",
    "ProvisioningError": "device_sdk.errors",
    "ProvisioningFailed": "device_sdk.errors",
    "ProvisioningRefused": "device_sdk.errors",
    "ProvisioningUnavailable": "device_sdk.errors",
    "ProxyError": "device_sdk.errors",
    "ProxyProtocolError": "device_sdk.errors",
    "ProxyRefused": "device_sdk.errors",
    "ProxyTimeout": "device_sdk.errors",
    "PublishError": "device_sdk.errors",
    "PublishRejected": "device_sdk.errors",
    "QosNotSupported": "device_sdk.errors",
    "RecoveryFailed": "device_sdk.errors",
    "Redirected": "device_sdk.errors",
    "ResolveError": "device_sdk.errors",
    "ResolveTimeout": "device_sdk.errors",
    "ResolverFailure": "device_sdk.errors",
    "RetainNotSupported": "device_sdk.errors",
    "StateMachineError": "device_sdk.errors",
    "TestbedError": "device_sdk.errors",
    "TlsError": "device_sdk.errors",
    "TransientRefusal": "device_sdk.errors",
    "CallableCredentials": "device_sdk.identity",
    "CredentialProvider": "device_sdk.identity",
    "Identity": "device_sdk.identity",
    "SasTokenProvider": "device_sdk.identity",
    "derive_device_key": "device_sdk.identity",
    "Message": "device_sdk.message",
    "PublishProperties": "device_sdk.message",
    "Metrics": "device_sdk.metrics",
    "MemoryOutbox": "device_sdk.outbox",
    "Outbox": "device_sdk.outbox",
    "PublishHandle": "device_sdk.outbox",
    "ProxySettings": "device_sdk.transports",
    "Transport": "device_sdk.transports",
    "AsyncDeviceClient": "device_sdk.aio",
    "X509Files": "device_sdk.identity.x509",
}


def __getattr__(name: str) -> object:
    if name == "events":
        value: object = _imported("device_sdk.events")
    elif name in _HOMES:
        value = getattr(_imported(_HOMES[name]), name)
    else:
        raise AttributeError(f"module 'device_sdk' has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def _imported(module: str) -> object:
    # The import statement's own path (importlib.import_module is not it), so that
    # python -X importtime still shows what each name loads.
    __import__(module)
    return sys.modules[module]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
