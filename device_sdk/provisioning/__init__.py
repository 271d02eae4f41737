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

from device_sdk.provisioning.assignment import Assignment, AssignmentStore
from device_sdk.provisioning.settings import DEFAULT_ENDPOINT, DpsSettings
from device_sdk.provisioning.source import DpsSource, hub_for, provisioning_delay

__all__ = [
    "DEFAULT_ENDPOINT",
    "Assignment",
    "AssignmentStore",
    "DpsSettings",
    "DpsSource",
    "hub_for",
    "provisioning_delay",
]
