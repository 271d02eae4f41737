"""Failback probes: does a hub answer again?

A probe resolves the hub fresh and opens a TCP connection (and a verified TLS
handshake when the hub uses TLS) to one of its addresses, then closes it. It
sends no MQTT CONNECT: a second session with the device's client id would
kick the live one off a shared cluster, and some hubs refuse unknown ids.
"""

from __future__ import annotations

import socket

from device_sdk.adapters.paho_link import make_ssl_context
from device_sdk.adapters.resolver import Resolver
from device_sdk.config import HubEndpoint
from device_sdk.errors import ResolveError


def hub_answers(hub: HubEndpoint, resolver: Resolver, timeout: float) -> bool:
    """True when some address of ``hub`` accepts TCP (and a verified TLS handshake)."""
    try:
        addresses = resolver.resolve_fresh(hub.fqdn).addresses
    except ResolveError:
        return False
    return any(_answers(hub, address, timeout) for address in addresses)


def _answers(hub: HubEndpoint, address: str, timeout: float) -> bool:
    try:
        with socket.create_connection((address, hub.port), timeout=timeout) as sock:
            if hub.tls is None:
                return True
            context = make_ssl_context(hub.tls)
            with context.wrap_socket(sock, server_hostname=hub.fqdn):
                return True
    except OSError:  # ssl.SSLError is an OSError too
        return False
