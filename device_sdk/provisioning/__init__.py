"""Azure's Device Provisioning Service (DPS) as a hub source.

DPS tells a device which IoT hub it belongs to; re-provisioning is IoT Hub's
own failover path. It feeds the same failover machine as the concierge and DNS
SRV, asked fresh, bounded by a deadline, and kept on disk between boots.

::

    config = ClientConfig(
        client_id="dev-1",  # DPS's device id replaces it on the assigned hub
        # A placeholder (or a real fallback hub): dialled only while DPS has not answered.
        hubs=(HubEndpoint(name="unprovisioned", fqdn="unprovisioned.invalid"),),
        credentials=...,  # how the device signs in to the hub DPS names
        dps=DpsSettings(
            id_scope="0ne00000A0A",
            registration_id="dev-1",
            sas_key_file="/etc/device/dps.key",  # or sas_key=..., or cert_file/key_file
            state_path="/var/lib/device/dps.json",
        ),
    )

Where and when DPS is asked is described in :mod:`device_sdk.engine.hub_sources`;
the testbed's :class:`~device_sdk.testbed.dps_service.DpsService` plays DPS in tests.
"""

from typing import TYPE_CHECKING

from device_sdk.lazy_names import load_name, public_dir
from device_sdk.provisioning.settings import DEFAULT_ENDPOINT, DpsSettings

if TYPE_CHECKING:
    from device_sdk.provisioning.assignment import Assignment, AssignmentStore
    from device_sdk.provisioning.source import DpsSource, hub_for, provisioning_delay

# The settings are all a configuration needs; the client's parts (HTTP, the state file)
# are imported on first use, by a client that asks DPS. Importing them here would also
# close a cycle: the HTTP adapter imports the assignment, which imports this package.
_HOMES = {
    "Assignment": "device_sdk.provisioning.assignment",
    "AssignmentStore": "device_sdk.provisioning.assignment",
    "DpsSource": "device_sdk.provisioning.source",
    "hub_for": "device_sdk.provisioning.source",
    "provisioning_delay": "device_sdk.provisioning.source",
}


def __getattr__(name: str) -> object:
    return load_name(globals(), __name__, _HOMES, name)


def __dir__() -> list[str]:
    return public_dir(globals(), __all__)


__all__ = [
    "DEFAULT_ENDPOINT",
    "Assignment",
    "AssignmentStore",
    "DpsSettings",
    "DpsSource",
    "hub_for",
    "provisioning_delay",
]
