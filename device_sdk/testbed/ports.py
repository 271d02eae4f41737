"""Free loopback ports for testbed parts.

A port is "free" when it can be bound on every host that will use it. Two
brokers that stand in for one hub before and after a DNS flip listen on the
same port at two loopback addresses (``127.0.0.2:P`` and ``127.0.0.3:P``), so
the port must be free on both at once.

Picking a port and binding it later is inherently racy: another process may
take the port in between. On a test machine that window is a few milliseconds
and the testbed reports a clear error when it is lost, which is the usual
trade-off; parts that can bind themselves (the DNS server, the proxy) keep
their sockets and never race.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Sequence
from contextlib import ExitStack

from device_sdk.errors import TestbedError

__all__ = ["address_family", "bind_socket", "pick_free_port", "pick_free_ports"]

_DEFAULT_ATTEMPTS = 50


def address_family(host: str) -> socket.AddressFamily:
    """Return ``AF_INET`` or ``AF_INET6`` for an IP literal such as ``127.0.0.2`` or ``::1``."""
    try:
        version = ipaddress.ip_address(host).version
    except ValueError as exc:
        raise TestbedError(f"testbed hosts must be IP literals, got {host!r}") from exc
    return socket.AF_INET if version == 4 else socket.AF_INET6


def bind_socket(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    """Return a new socket of ``kind`` bound to ``(host, port)``; closed again on failure."""
    sock = socket.socket(address_family(host), kind)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def pick_free_port(
    hosts: Sequence[str] = ("127.0.0.1",), *, udp: bool = False, exclude: Sequence[int] = ()
) -> int:
    """Return one TCP port (and UDP port too, when ``udp``) that is free on every host."""
    return pick_free_ports(1, hosts, udp=udp, exclude=exclude)[0]


def pick_free_ports(
    count: int,
    hosts: Sequence[str] = ("127.0.0.1",),
    *,
    udp: bool = False,
    exclude: Sequence[int] = (),
) -> list[int]:
    """Return ``count`` distinct ports, each free on every host.

    The probe sockets of earlier picks stay bound until all ports are chosen,
    so the kernel cannot hand the same port out twice.
    """
    if not hosts:
        raise TestbedError("pick_free_ports needs at least one host")
    kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if udp else [socket.SOCK_STREAM]
    ports: list[int] = []
    with ExitStack() as held:
        for _ in range(count):
            ports.append(_reserve_port(held, hosts, kinds, set(exclude) | set(ports)))
    return ports


def _reserve_port(
    held: ExitStack, hosts: Sequence[str], kinds: Sequence[socket.SocketKind], taken: set[int]
) -> int:
    """Bind a fresh port on every (host, kind) pair and leave the sockets in ``held``."""
    for _ in range(_DEFAULT_ATTEMPTS):
        with ExitStack() as attempt:
            # The first host chooses the port; every other (host, kind) must accept it.
            first = attempt.enter_context(bind_socket(hosts[0], 0, kinds[0]))
            port: int = first.getsockname()[1]
            if port in taken or not _bind_everywhere(attempt, port, hosts, kinds):
                continue
            held.enter_context(attempt.pop_all())
            return port
    raise TestbedError(f"no port free on all of {list(hosts)} after {_DEFAULT_ATTEMPTS} tries")


def _bind_everywhere(
    stack: ExitStack, port: int, hosts: Sequence[str], kinds: Sequence[socket.SocketKind]
) -> bool:
    for index, host in enumerate(hosts):
        for kind_index, kind in enumerate(kinds):
            if index == 0 and kind_index == 0:
                continue  # already bound by the caller
            try:
                stack.enter_context(bind_socket(host, port, kind))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return False
                raise TestbedError(f"cannot bind {host}:{port}: {exc}") from exc
    return True
