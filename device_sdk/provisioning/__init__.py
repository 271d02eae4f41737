"""Azure's Device Provisioning Service (DPS) as a hub source.

DPS tells a device which IoT hub it belongs to; re-provisioning is IoT Hub's
own failover path. It feeds the same failover machine as the concierge and DNS
SRV, asked fresh, bounded by a deadline, and kept on disk between boots.
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
