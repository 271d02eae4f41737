"""What a program loads is what its configuration uses: heavy modules stay out until asked for.

On a Pi Zero every module is felt at each boot and each ``device-sdk publish``. These
tests run fresh interpreters and read ``sys.modules``, so an eager import that creeps
back into the package (a module-level ``import cryptography`` in the engine's path, a
package ``__init__`` that pulls in its client) fails here by name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import device_sdk

ROOT = Path(__file__).resolve().parents[2]

# Loaded only by the configurations that need them, and why each is heavy:
# cryptography (a concierge's signatures, X509Files: a large native library), sqlite3
# (the durable outbox), asyncio (the async face), and the SDK's own rooms behind them.
ON_DEMAND = (
    "cryptography",
    "sqlite3",
    "asyncio",
    "device_sdk.aio",
    "device_sdk.concierge",
    "device_sdk.provisioning",
    "device_sdk.adapters.sqlite_outbox",
    "device_sdk.adapters.dps_http",
    "device_sdk.identity.sas",
    "device_sdk.identity.x509",
)

# Prints, after each step, which of the watched modules are loaded (a JSON list per line).
_PROBE = """
import json, sys
watched = {watched!r}

def loaded():
    names = [m for m in sys.modules if any(m == w or m.startswith(w + ".") for w in watched)]
    print(json.dumps(sorted(names)), flush=True)

{steps}
"""


def _loaded_after(*steps: str, watched: tuple[str, ...] = ON_DEMAND) -> list[set[str]]:
    code = _PROBE.format(watched=watched, steps="\nloaded()\n".join(steps) + "\nloaded()")
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [set(json.loads(line)) for line in done.stdout.splitlines()]


def _client(outbox: str) -> str:
    return f"""
from device_sdk import ClientConfig, DeviceClient, HubEndpoint, OutboxSettings
hub = HubEndpoint(name="local", fqdn="127.0.0.1", port=1883, tls=None)
client = DeviceClient(ClientConfig(client_id="footprint", hubs=(hub,), outbox={outbox}))
"""


def test_import_device_sdk_loads_the_package_alone() -> None:
    # Every public name loads on first use: not paho, not dnspython, not the engine.
    # The only other module is the loader itself (a few lines, the standard library only).
    watched = ("device_sdk", "paho", "dns", "tenacity", "http", "ssl", *ON_DEMAND)
    (after_import,) = _loaded_after("import device_sdk", watched=watched)
    assert after_import == {"device_sdk", "device_sdk.lazy_names"}


def test_a_plain_client_loads_nothing_it_does_not_use() -> None:
    # A token-less client on an IP literal with the memory outbox: no concierge, no DPS,
    # no SRV, no SQLite, no asyncio, no cryptography. (paho itself imports dnspython's
    # resolver and http.client, so those are paho's cost, not watched here.)
    constructed, closed = _loaded_after(_client("OutboxSettings()"), "client.close()")
    assert constructed == set()
    assert closed == set()


def test_the_watch_sees_what_a_configuration_asks_for(tmp_path: Path) -> None:
    # The control: the same probe does see the durable outbox, the certificate files
    # and the async face when a program uses them, so the empty sets above mean something.
    durable = _client(f"OutboxSettings(path={str(tmp_path / 'outbox.sqlite')!r})")
    steps = (durable, "client.close()\nfrom device_sdk import X509Files", "import device_sdk.aio")
    with_sqlite, with_x509, with_aio = _loaded_after(*steps)
    assert {"sqlite3", "device_sdk.adapters.sqlite_outbox"} <= with_sqlite
    assert "cryptography" not in with_sqlite
    assert {"cryptography", "device_sdk.identity.x509"} <= with_x509
    assert {"asyncio", "device_sdk.aio"} <= with_aio


def test_lazy_names_are_listed_and_importable() -> None:
    listed = dir(device_sdk)
    for name in device_sdk.__all__:
        assert name in listed, name
    namespace: dict[str, object] = {}
    exec("from device_sdk import *", namespace)  # the star import some programs write
    assert set(device_sdk.__all__) <= set(namespace)
    assert namespace["DeviceClient"] is device_sdk.DeviceClient


def test_the_command_line_loads_no_concierge_service_or_crypto() -> None:
    # Every `device-sdk` command (publish on a small device too) builds the whole parser,
    # the concierge's subcommands included: their server and keys load only when run.
    (after_import,) = _loaded_after("import device_sdk.cli")
    assert after_import.isdisjoint({"cryptography", "sqlite3", "asyncio"}), after_import
    assert "device_sdk.concierge.service" not in after_import
    assert "device_sdk.concierge.signing" not in after_import
