"""Proves the two faces run one engine: the asyncio face holds no second recovery path.

Three independent checks: what the async modules import (nothing that dials,
resolves, retries or decides), which methods the faces define (none of the
engine's own), and what actually runs (the async face's publish is the
engine's publish, and its outcome comes back through the same handle).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path

import pytest

import device_sdk.aio
import device_sdk.streams
from device_sdk import (
    AsyncDeviceClient,
    ClientClosed,
    ClientConfig,
    ConfigError,
    DeviceClient,
    HubEndpoint,
)
from device_sdk.engine import Engine
from device_sdk.outbox import PublishHandle

# Anything that touches the network or decides where to connect lives behind the engine.
FORBIDDEN_IMPORTS = (
    "paho",
    "dns",
    "tenacity",
    "socket",
    "selectors",
    "ssl",
    "device_sdk.engine",
    "device_sdk.core.failover",
    "device_sdk.core.retry",
    "device_sdk.core.liveness",
    "device_sdk.adapters.paho_link",
    "device_sdk.adapters.srv",
    "device_sdk.adapters.probe",
    "device_sdk.concierge",
)


def _imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("module", [device_sdk.aio, device_sdk.streams], ids=lambda m: m.__name__)
def test_the_async_modules_import_nothing_of_the_recovery_path(module: object) -> None:
    path = Path(inspect.getfile(module))  # type: ignore[arg-type]
    for name in _imported_modules(path):
        bad = [f for f in FORBIDDEN_IMPORTS if name == f or name.startswith(f + ".")]
        assert not bad, f"{path.name} imports {name}: recovery logic belongs to the engine"


@pytest.mark.parametrize("face", [AsyncDeviceClient, DeviceClient], ids=lambda c: c.__name__)
def test_no_face_defines_any_of_the_engines_own_methods(face: type) -> None:
    engine_private = {
        name for name, value in vars(Engine).items() if callable(value) and _private(name)
    }
    assert engine_private, "the check would prove nothing"
    assert not engine_private & set(vars(face)), "a face re-implements engine logic"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _config() -> ClientConfig:
    hub = HubEndpoint(name="primary", fqdn="hub.invalid", port=1883, tls=None)
    return ClientConfig(client_id="one-engine", hubs=(hub,))


@pytest.mark.asyncio
async def test_the_async_face_publishes_through_the_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, bytes, int]] = []
    engine_publish = Engine.publish

    def recording(self: Engine, topic: str, payload: bytes, qos: int) -> PublishHandle:
        calls.append((topic, payload, qos))
        return engine_publish(self, topic, payload, qos)

    monkeypatch.setattr(Engine, "publish", recording)
    client = AsyncDeviceClient(_config())  # never connected: nothing leaves the process
    assert isinstance(client._client._engine, Engine)
    handle = client.publish_nowait("t/1", "x")
    assert calls == [("t/1", b"x", 1)]  # validated and encoded once, by the sync face
    waiting = asyncio.ensure_future(client.acknowledged(handle))
    await client.close()
    with pytest.raises(ClientClosed):  # the engine's outcome, carried by the same handle
        await waiting
    with pytest.raises(ClientClosed):
        await client.publish("t/2", b"y")


@pytest.mark.asyncio
async def test_both_faces_refuse_bad_input_with_the_same_errors() -> None:
    sync_face, async_face = DeviceClient(_config()), AsyncDeviceClient(_config())
    try:
        for call in (
            lambda: sync_face.subscribe("a/#/b", lambda _t, _p: None),
            lambda: async_face.messages("a/#/b"),
            lambda: sync_face.publish("a/+", b""),
            lambda: async_face.publish_nowait("a/+", b""),
            lambda: sync_face.publish("a", b"", qos=2),
            lambda: async_face.publish_nowait("a", b"", qos=2),
        ):
            with pytest.raises(ConfigError):
                call()
        with pytest.raises(ConfigError, match="qos"):
            await async_face.subscribe("a/b", qos=2)
    finally:
        sync_face.close()
        await async_face.close()
