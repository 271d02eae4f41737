"""Failback probes: does a hub answer again?

A probe resolves the hub fresh and opens a TCP connection (and a verified TLS
handshake when the hub uses TLS) to one of its addresses, then closes it. It
sends no MQTT CONNECT: a second session with the device's client id would
kick the live one off a shared cluster, and some hubs refuse unknown ids.
Every wait is cut short by ``cancel``, so a probe never holds up ``close()``.
"""

from __future__ import annotations

import time

from device_sdk.adapters.cancel import NEVER, Cancelled, CancelToken
from device_sdk.adapters.dialing import connect_tcp, tls_handshake
from device_sdk.adapters.paho_link import make_ssl_context
from device_sdk.adapters.resolver import Resolver
from device_sdk.config import HubEndpoint
from device_sdk.errors import ConnectError


def hub_answers(
    hub: HubEndpoint, resolver: Resolver, timeout: float, cancel: CancelToken = NEVER
) -> bool:
    """True when some address of ``hub`` accepts TCP (and a verified TLS handshake).

    Raises :class:`~device_sdk.adapters.cancel.Cancelled` once ``cancel`` is set.
    """
    try:
        addresses = resolver.resolve_fresh(hub.fqdn).addresses
    except Cancelled:
        raise
    except ConnectError:
        return False
    return any(_answers(hub, address, timeout, cancel) for address in addresses)


def _answers(hub: HubEndpoint, address: str, timeout: float, cancel: CancelToken) -> bool:
    deadline = time.monotonic() + timeout
    try:
        with connect_tcp(address, hub.port, deadline, cancel) as sock:
            if hub.tls is None:
                return True
            context = make_ssl_context(hub.tls)
            with context.wrap_socket(
                sock, server_hostname=hub.fqdn.rstrip("."), do_handshake_on_connect=False
            ) as tls_sock:
                tls_handshake(tls_sock, deadline, cancel)
                return True
    except OSError:  # refused, timed out; ssl.SSLError (a certificate that fails) is one too
        return False
