"""Failback probes: does a hub answer again?

A probe resolves the hub fresh and opens a TCP connection (and a verified TLS
handshake when the hub uses TLS) to one of its addresses, then closes it. It
sends no MQTT CONNECT: a second session with the device's client id would
kick the live one off a shared cluster, and some hubs refuse unknown ids.
Every wait is cut short by ``cancel``, so a probe never holds up ``close()``.
"""

from __future__ import annotations

import socket
import time

from device_sdk.adapters.cancel import NEVER, Cancelled, CancelToken
from device_sdk.adapters.dialing import connect_tcp, tls_handshake
from device_sdk.adapters.paho_link import make_ssl_context
from device_sdk.adapters.resolver import Resolver
from device_sdk.config import HubEndpoint
from device_sdk.errors import ConnectError
from device_sdk.transports import ProxySettings, Transport


def hub_answers(
    hub: HubEndpoint,
    resolver: Resolver,
    timeout: float,
    cancel: CancelToken = NEVER,
    *,
    proxy: ProxySettings | None = None,
) -> bool:
    """True when some address of ``hub`` accepts TCP (and a verified TLS handshake) on
    one of its ways in.

    Any way in will do: a hub reached over wss:443 because 8883 is blocked here
    is as healthy as one reached on 8883. Raises
    :class:`~device_sdk.adapters.cancel.Cancelled` once ``cancel`` is set.
    """
    return any(way_answers(hub, way, resolver, timeout, cancel, proxy=proxy) for way in hub.ways_in)


def way_answers(
    hub: HubEndpoint,
    way: Transport,
    resolver: Resolver,
    timeout: float,
    cancel: CancelToken = NEVER,
    *,
    proxy: ProxySettings | None = None,
) -> bool:
    """True when ``hub`` answers on ``way`` (its port, and its TLS handshake with its ALPN).

    The probe that brings a device back from a fallback way in (wss:443) to the
    first one (mqtts:8883) once that opens again. Through ``proxy``, the proxy is
    asked to CONNECT (a firewall between the proxy and the hub is what counts).
    """
    if proxy is not None and not proxy.bypasses(hub.fqdn):
        from device_sdk.adapters.http_connect import open_tunnel, proxy_addresses

        deadline = time.monotonic() + timeout
        try:
            target = hub.fqdn.rstrip(".")
            if proxy.resolve_locally:
                target = resolver.resolve_fresh(hub.fqdn).addresses[0]
            address = proxy_addresses(proxy, resolver, deadline)[0]
            sock = open_tunnel(proxy, address, target, way.port, deadline=deadline, cancel=cancel)
        except Cancelled:
            raise
        except (ConnectError, OSError):
            return False
        return _handshakes(hub, way, sock, deadline, cancel)
    try:
        addresses = resolver.resolve_fresh(hub.fqdn).addresses
    except Cancelled:
        raise
    except ConnectError:
        return False
    return any(_answers(hub, address, timeout, cancel, way=way) for address in addresses)


def _handshakes(
    hub: HubEndpoint, way: Transport, sock: socket.socket, deadline: float, cancel: CancelToken
) -> bool:
    with sock:
        if hub.tls is None or not way.secure:
            return True
        context = make_ssl_context(hub.tls, alpn_protocols=way.alpn_protocols)
        try:
            with context.wrap_socket(
                sock, server_hostname=hub.fqdn.rstrip("."), do_handshake_on_connect=False
            ) as tls_sock:
                tls_handshake(tls_sock, deadline, cancel)
                return True
        except OSError:  # ssl.SSLError (a certificate that fails) is one too
            return False


def _answers(
    hub: HubEndpoint, address: str, timeout: float, cancel: CancelToken, *, way: Transport
) -> bool:
    deadline = time.monotonic() + timeout
    try:
        sock = connect_tcp(address, way.port, deadline, cancel)
    except OSError:  # refused, timed out
        return False
    return _handshakes(hub, way, sock, deadline, cancel)
