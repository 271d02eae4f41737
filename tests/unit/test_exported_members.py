"""Pins the public names: adding or removing one is a deliberate, reviewed change."""

from __future__ import annotations

import device_sdk
import device_sdk.testbed

PUBLIC = {
    "AsyncDeviceClient", "ClientClosed", "ClientConfig", "ConfigError", "ConnectError",
    "ConnectRefused", "ConnectTimeout", "Credentials", "DeviceClient", "DeviceSDKError",
    "DialError", "DnsSettings", "FailoverPolicy", "HubBusy", "HubEndpoint", "LinkLost",
    "LivenessPolicy", "MemoryOutbox", "Metrics", "NameNotFound", "NoAddress",
    "NotConnected", "Outbox", "OutboxFull", "OutboxSettings", "PermanentRefusal",
    "PublishError", "PublishHandle", "PublishRejected", "RecoveryFailed", "Redirected",
    "ResolveError", "ResolveTimeout", "ResolverFailure", "RetryPolicy", "SrvSettings",
    "StateMachineError", "TestbedError", "TlsError", "TlsSettings", "TransientRefusal",
    "__version__", "events", "EngineFailed", "ProtocolError", "MessageNotDeliverable",
    "MessageTooLarge", "QosNotSupported", "PoisonMessage", "SupervisionPolicy",
    "CallableCredentials", "CredentialError", "CredentialExpired", "CredentialProvider",
    "Identity", "ProvisioningError", "ProvisioningFailed", "ProvisioningRefused",
    "ProvisioningUnavailable", "SasTokenProvider", "X509Files", "derive_device_key",
    "Birth", "Will", "Message", "PublishProperties", "MessageExpired", "RetainNotSupported",
    "ProxySettings", "Transport",
    "ProxyError", "ProxyProtocolError", "ProxyRefused", "ProxyTimeout",
}  # fmt: skip


def test_public_names_are_pinned() -> None:
    assert set(device_sdk.__all__) == PUBLIC
    for name in device_sdk.__all__:
        assert hasattr(device_sdk, name), name


def test_every_error_derives_from_the_root() -> None:
    for name in device_sdk.__all__:
        value = getattr(device_sdk, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, device_sdk.DeviceSDKError), name


def test_testbed_names_resolve() -> None:
    for name in device_sdk.testbed.__all__:
        assert hasattr(device_sdk.testbed, name), name


def test_a_synchronous_gateway_never_imports_asyncio() -> None:
    import subprocess
    import sys

    code = (
        "import sys, device_sdk; assert 'asyncio' not in sys.modules, 'asyncio imported'; "
        "from device_sdk import AsyncDeviceClient; assert 'asyncio' in sys.modules; "
        "assert AsyncDeviceClient is device_sdk.AsyncDeviceClient"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
