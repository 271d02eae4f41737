"""Happy Eyeballs for a hub's addresses: race TCP connects, staggered, and dial the winner first.

A hub name often resolves to several addresses, IPv6 and IPv4 interleaved (see
the resolver). Dialled one after another, an address whose packets vanish (a
broken IPv6 route on a cellular modem, a withdrawn load-balancer address) costs
a whole connect timeout before the next one is tried, and that on every
attempt of an outage. As RFC 8305 recommends, connects start 250 ms apart, a
failure starts the next one at once, and the first to complete wins. Only TCP
is raced. The winner's connected socket is handed to the caller, which opens
the real link (TLS, CONNECT) on it: one attempt is one TCP connection to the
hub. Why that matters: closing the winner and dialling it again doubled the
connections a hub saw, made TLS brokers log a failed handshake for every
connect, and broke servers that accept one connection only.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from dataclasses import dataclass

from device_sdk.adapters.cancel import NEVER, CancelToken
from device_sdk.adapters.dialing import start_connect

__all__ = [
    "CONNECTION_ATTEMPT_DELAY",
    "Endpoint",
    "EndpointRace",
    "Race",
    "race_connects",
    "race_endpoints",
]

Endpoint = tuple[str, int]  # an IP literal and a port: one way into one address of a hub

# RFC 8305, section 5: the recommended delay between starting connection attempts.
CONNECTION_ATTEMPT_DELAY = 0.25


@dataclass(frozen=True, slots=True)
class Race:
    """The first address that accepted a TCP connection, its socket, and why the others did not.

    ``sock`` is the winner's connected, non-blocking socket: the caller owns it
    and must close it (:meth:`close` does) if it does not use it.
    """

    winner: str | None
    failures: dict[str, OSError]  # every address that lost by failing or running out of time
    sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def race_connects(
    addresses: tuple[str, ...],
    port: int,
    *,
    timeout: float,
    stagger: float = CONNECTION_ATTEMPT_DELAY,
    cancel: CancelToken = NEVER,
) -> Race:
    """Race TCP connects to ``addresses`` (in their order, ``stagger`` apart) for ``timeout``.

    Every socket opened here is closed before it returns, except the winner's,
    which the race hands over in :attr:`Race.sock`. Bounded: at most one connect
    per address, and no wait past ``timeout``. ``cancel`` ends the race at once with
    :class:`~device_sdk.adapters.cancel.Cancelled`.
    """
    race = race_endpoints(
        tuple((address, port) for address in addresses),
        timeout=timeout,
        stagger=stagger,
        cancel=cancel,
    )
    winner = race.winner[0] if race.winner is not None else None
    failures = {address: error for (address, _port), error in race.failures.items()}
    return Race(winner=winner, failures=failures, sock=race.sock)


@dataclass(frozen=True, slots=True)
class EndpointRace:
    """:class:`Race` over endpoints: the winning (address, port), its socket, the others' errors."""

    winner: Endpoint | None
    failures: dict[Endpoint, OSError]
    sock: socket.socket | None = None


def race_endpoints(
    endpoints: tuple[Endpoint, ...],
    *,
    timeout: float,
    stagger: float = CONNECTION_ATTEMPT_DELAY,
    cancel: CancelToken = NEVER,
) -> EndpointRace:
    """The race of :func:`race_connects` over (address, port) pairs: a hub's addresses on
    each of its ways in (8883, then 443), so a blocked port costs one stagger, not a
    connect timeout."""
    cancel.check("the connect race")
    deadline = time.monotonic() + timeout
    waiting = list(endpoints)
    failures: dict[Endpoint, OSError] = {}
    racing: dict[socket.socket, Endpoint] = {}
    next_start = 0.0
    with selectors.DefaultSelector() as selector:
        selector.register(cancel, selectors.EVENT_READ)
        try:
            while (waiting or racing) and (now := time.monotonic()) < deadline:
                if waiting and (not racing or now >= next_start):
                    endpoint = waiting.pop(0)
                    try:
                        sock = start_connect(*endpoint)
                    except OSError as exc:  # unreachable at once: the next one starts now
                        failures[endpoint] = exc
                        continue
                    racing[sock] = endpoint
                    selector.register(sock, selectors.EVENT_WRITE)
                    next_start = now + stagger
                    continue
                until = deadline if not waiting else min(deadline, next_start)
                for key, _events in selector.select(max(0.0, until - now)):
                    if key.fileobj is cancel:
                        cancel.check("the connect race")  # readable: it raises
                        continue
                    done = key.fileobj
                    assert isinstance(done, socket.socket)
                    endpoint = racing.pop(done)
                    selector.unregister(done)
                    code = done.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code == 0:
                        done.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        return EndpointRace(winner=endpoint, failures=failures, sock=done)
                    done.close()
                    failures[endpoint] = OSError(code, os.strerror(code))
                    next_start = time.monotonic()  # a failure starts the next one at once
        finally:
            for sock in racing:
                sock.close()
    for endpoint in (*racing.values(), *waiting):
        failures[endpoint] = TimeoutError(errno.ETIMEDOUT, f"no answer within {timeout:g} s")
    return EndpointRace(winner=None, failures=failures)
