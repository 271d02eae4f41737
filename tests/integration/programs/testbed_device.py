"""What the device programs share: a ClientConfig for a testbed, from a JSON description.

``spec`` holds ``hubs`` (name, fqdn, port; plain MQTT), ``client_id``, ``dns_host``
and ``dns_port``; the fast test policies apply, and ``overrides`` set the rest.
"""

from __future__ import annotations

from typing import Any

from device_sdk import ClientConfig, DnsSettings, HubEndpoint
from device_sdk.testbed import FAST_FAILOVER, FAST_LIVENESS, FAST_RETRY


def testbed_config(spec: dict[str, Any], **overrides: Any) -> ClientConfig:
    hubs = tuple(
        HubEndpoint(name=h["name"], fqdn=h["fqdn"], port=h["port"], tls=None) for h in spec["hubs"]
    )
    return ClientConfig(
        client_id=str(spec["client_id"]),
        hubs=hubs,
        dns=DnsSettings(
            nameservers=(str(spec["dns_host"]),),
            port=int(spec["dns_port"]),
            timeout=0.5,
            lifetime=1.0,
        ),
        retry=FAST_RETRY,
        failover=FAST_FAILOVER,
        liveness=FAST_LIVENESS,
        **overrides,
    )
