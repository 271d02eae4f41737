"""A small authoritative DNS server on loopback whose records tests change at run time.

It serves UDP and TCP on the same port, answers with the AA flag, and knows
only the names it was given: an unknown name is NXDOMAIN, a known name without
records of the asked type is NODATA (NOERROR, empty answer). Faults are set
per name: answer SERVFAIL or REFUSED, or never answer at all.

::

    with DnsServer() as dns_server:
        dns_server.set_address("hub-a.device-sdk.test", ["127.0.0.2"], ttl=1)
        resolver = dns_server.resolver()
        ...
        dns_server.set_address("hub-a.device-sdk.test", ["127.0.0.3"])   # the DNS flip
        assert dns_server.queries("hub-a.device-sdk.test", "A")

Negative answers carry no SOA record, so resolvers cannot cache them: a name
added after an NXDOMAIN resolves on the very next query, which is what tests
want. One thread serves everything through a selector, so `stop` is prompt
and bounded.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import ipaddress
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Final, Self

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.resolver
import dns.rrset

from device_sdk.errors import ConfigError, TestbedError
from device_sdk.testbed.loop_thread import LoopThread, SelectorLoop
from device_sdk.testbed.ports import bind_socket

__all__ = ["DnsQuery", "DnsServer", "SrvTarget"]

_MAX_TTL = 2**31 - 1
_CLASSIC_UDP_PAYLOAD = 512  # RFC 1035 limit for a query without EDNS
_TCP_LENGTH_PREFIX = 2
_LOG_LIMIT = 100_000
_BIND_ATTEMPTS = 20
_STOP_TIMEOUT = 5.0
_IN = dns.rdataclass.IN


@dataclass(frozen=True, slots=True, kw_only=True)
class SrvTarget:
    """One SRV record: where a service runs (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsQuery:
    """One query the server received.

    ``time`` is ``time.monotonic()`` at arrival; ``name`` is lower case
    without the final dot; ``outcome`` is the rcode sent (``"NOERROR"``,
    ``"NXDOMAIN"``, ...) or ``"dropped"`` when the name's fault is `drop`.
    """

    time: float
    name: str
    rdtype: str
    transport: str
    client: tuple[str, int]
    outcome: str


class _Drop:
    """The fault "never answer"."""


_DROP: Final = _Drop()
_Fault = dns.rcode.Rcode | _Drop
# (query wire, transport, client address) -> reply wire, or None to stay silent
_Responder = Callable[[bytes, str, tuple[str, int]], bytes | None]


class _Records:
    """The server's names, records, faults and query log; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[dns.name.Name, dict[dns.rdatatype.RdataType, dns.rdataset.Rdataset]] = {}
        self._faults: dict[dns.name.Name, _Fault] = {}
        self._log: collections.deque[DnsQuery] = collections.deque(maxlen=_LOG_LIMIT)

    def replace(
        self,
        name: dns.name.Name,
        rdtypes: Sequence[dns.rdatatype.RdataType],
        rdatasets: Sequence[dns.rdataset.Rdataset],
    ) -> None:
        """Drop the name's records of ``rdtypes``, then add ``rdatasets`` (the name now exists)."""
        with self._lock:
            records = self._names.setdefault(name, {})
            for rdtype in rdtypes:
                records.pop(rdtype, None)
            records.update((rdataset.rdtype, rdataset) for rdataset in rdatasets)

    def remove(self, name: dns.name.Name) -> None:
        with self._lock:
            self._names.pop(name, None)

    def set_fault(self, name: dns.name.Name, fault: _Fault | None) -> None:
        with self._lock:
            if fault is None:
                self._faults.pop(name, None)
            else:
                self._faults[name] = fault

    def lookup(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> tuple[_Fault | None, bool, dns.rdataset.Rdataset | None]:
        """Return (fault, whether the name exists, its rdataset of ``rdtype``)."""
        with self._lock:
            records = self._names.get(name)
            found = records.get(rdtype) if records is not None else None
            return self._faults.get(name), records is not None, found

    def record(self, query: DnsQuery) -> None:
        with self._lock:
            self._log.append(query)

    def queries(self) -> list[DnsQuery]:
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()


class DnsServer:
    """An authoritative DNS server on one loopback address, UDP and TCP on one port.

    ``port=0`` picks a port free for both transports. Records and faults can
    be changed from any thread while it runs (and before it starts).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._records = _Records()
        self._thread: LoopThread | None = None
        self._loop: _ServeLoop | None = None

    # -- addresses and lifecycle ---------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The UDP and TCP port (known once started when created with ``port=0``)."""
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return self._host, self._port

    def start(self) -> None:
        """Bind both sockets and start serving in a background thread."""
        if self._thread is not None:
            raise TestbedError(f"DNS server on {self._host}:{self._port} already started")
        udp, tcp = _bind_udp_and_tcp(self._host, self._port)
        self._port = udp.getsockname()[1]
        self._loop = _ServeLoop(udp, tcp, self._respond)
        self._thread = LoopThread(self._loop, f"dns-server-{self._port}")

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop serving and close every socket; waits at most ``timeout``. Idempotent."""
        if self._thread is None:
            return
        self._thread.stop(timeout, "DNS server")
        self._thread = self._loop = None

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def resolver(self, *, lifetime: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks this server only (no resolv.conf, no cache)."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self._host]
        resolver.port = self._port
        resolver.lifetime = lifetime
        resolver.timeout = lifetime
        return resolver

    # -- records and faults --------------------------------------------------

    def set_address(self, name: str, addresses: Sequence[str], *, ttl: int = 60) -> None:
        """Make ``addresses`` the name's whole A and AAAA sets (IPv4 → A, IPv6 → AAAA).

        An empty list leaves a name with no address at all (NODATA for A and AAAA).
        """
        parsed = [_ip_address(text) for text in _strings("addresses", addresses)]
        a = [_rdata(dns.rdatatype.A, str(ip)) for ip in parsed if ip.version == 4]
        aaaa = [_rdata(dns.rdatatype.AAAA, str(ip)) for ip in parsed if ip.version == 6]
        rdatasets = [_rdataset(ttl, rdatas) for rdatas in (a, aaaa) if rdatas]
        self._records.replace(_name(name), [dns.rdatatype.A, dns.rdatatype.AAAA], rdatasets)

    def set_srv(self, name: str, targets: Sequence[SrvTarget], *, ttl: int = 60) -> None:
        """Make ``targets`` the name's whole SRV set."""
        rdatas = [_srv_rdata(target) for target in targets]
        rdatasets = [_rdataset(ttl, rdatas)] if rdatas else []
        self._records.replace(_name(name), [dns.rdatatype.SRV], rdatasets)

    def remove(self, name: str) -> None:
        """Forget every record of the name: it answers NXDOMAIN again. Faults stay."""
        self._records.remove(_name(name))

    def fail(self, name: str, rcode: dns.rcode.Rcode = dns.rcode.SERVFAIL) -> None:
        """Answer every query for the name with ``rcode`` (SERVFAIL, REFUSED, ...)."""
        if rcode == dns.rcode.NOERROR:
            raise ConfigError("rcode", rcode, "an error rcode such as SERVFAIL or REFUSED")
        self._records.set_fault(_name(name), dns.rcode.Rcode(rcode))

    def drop(self, name: str) -> None:
        """Never answer queries for the name, so resolvers time out."""
        self._records.set_fault(_name(name), _DROP)

    def clear_fault(self, name: str) -> None:
        """Answer the name normally again."""
        self._records.set_fault(_name(name), None)

    # -- the query log -------------------------------------------------------

    def queries(self, name: str | None = None, rdtype: str | None = None) -> list[DnsQuery]:
        """A snapshot of the query log, oldest first, optionally for one name and type."""
        wanted_name = _display(_name(name)) if name is not None else None
        wanted_type = rdtype.upper() if rdtype is not None else None
        return [
            query
            for query in self._records.queries()
            if wanted_name in (None, query.name) and wanted_type in (None, query.rdtype)
        ]

    def clear_log(self) -> None:
        self._records.clear_log()

    # -- answering (runs on the server thread) -------------------------------

    def _respond(self, wire: bytes, transport: str, client: tuple[str, int]) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # not DNS, or too mangled to echo an id back: stay silent
        if query.flags & dns.flags.QR:
            return None  # a response, not a query: answering it could start a loop
        response = self._answer(query)
        if len(query.question) == 1:
            question = query.question[0]
            outcome = "dropped" if response is None else dns.rcode.to_text(response.rcode())
            self._records.record(
                DnsQuery(
                    time=time.monotonic(),
                    name=_display(question.name),
                    rdtype=dns.rdatatype.to_text(question.rdtype),
                    transport=transport,
                    client=client,
                    outcome=outcome,
                )
            )
        if response is None:
            return None
        return _to_wire(response, _max_size(query, transport))

    def _answer(self, query: dns.message.Message) -> dns.message.Message | None:
        response = dns.message.make_response(query)
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        fault, exists, rdataset = self._records.lookup(question.name, question.rdtype)
        if isinstance(fault, _Drop):
            return None
        if fault is not None:
            response.set_rcode(fault)
            return response
        # Only real answers are authoritative; errors above are not.
        response.flags |= dns.flags.AA
        if not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif rdataset is not None:
            # Echo the question's spelling: resolvers using 0x20 case
            # randomisation compare it with what they sent.
            response.answer.append(
                dns.rrset.from_rdata_list(question.name, rdataset.ttl, list(rdataset))
            )
        return response


class _ServeLoop(SelectorLoop):
    """The server thread: one selector over the UDP socket, the TCP listener and its clients."""

    def __init__(self, udp: socket.socket, tcp: socket.socket, respond: _Responder) -> None:
        self._udp = udp
        self._tcp = tcp
        self._respond = respond
        super().__init__()
        self._clients: set[_TcpClient] = set()
        # Each registration carries its handler: data(mask) serves that socket.
        for sock, handler in (
            (udp, self._serve_udp),
            (tcp, self._accept),
            (self._wake_reader, self._drain_waker),
        ):
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, handler)

    def _drain_waker(self, _mask: int) -> None:
        self._wake_reader.recv(64)

    def _serve_udp(self, _mask: int) -> None:
        try:
            wire, client = self._udp.recvfrom(65535)
        except (BlockingIOError, ConnectionRefusedError):
            return  # spurious wake-up, or an ICMP error from an earlier reply
        reply = self._respond(wire, "udp", client[:2])
        if reply is not None:
            with contextlib.suppress(OSError):  # the client went away; UDP promises nothing
                self._udp.sendto(reply, client)

    def _accept(self, _mask: int) -> None:
        try:
            sock, address = self._tcp.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        client = _TcpClient(sock, address[:2])
        self._clients.add(client)
        self._selector.register(sock, selectors.EVENT_READ, partial(self._serve_tcp, client))

    def _serve_tcp(self, client: _TcpClient, mask: int) -> None:
        if client not in self._clients:
            return  # a stale event for a client dropped earlier in the same batch
        try:
            if mask & selectors.EVENT_READ and not client.receive(self._respond):
                self._drop_client(client)
                return
            client.flush()
        except OSError:
            self._drop_client(client)
            return
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.pending else 0)
        key = self._selector.get_key(client.sock)
        if key.events != wanted:
            self._selector.modify(client.sock, wanted, key.data)  # keep the handler

    def _drop_client(self, client: _TcpClient) -> None:
        self._selector.unregister(client.sock)
        self._clients.discard(client)
        client.sock.close()

    def _shut_down(self) -> None:
        for client in list(self._clients):
            self._drop_client(client)
        self._selector.close()
        for sock in (self._udp, self._tcp, self._wake_reader):
            sock.close()


class _TcpClient:
    """One DNS-over-TCP client: length-prefixed messages in, replies out (RFC 1035 4.2.2)."""

    def __init__(self, sock: socket.socket, address: tuple[str, int]) -> None:
        self.sock = sock
        self.address = address
        self._inbox = bytearray()
        self._outbox = bytearray()

    @property
    def pending(self) -> bool:
        return bool(self._outbox)

    def receive(self, respond: _Responder) -> bool:
        """Read what arrived and queue replies; False once the client has closed."""
        try:
            data = self.sock.recv(65535)
        except BlockingIOError:
            return True
        if not data:
            return False
        self._inbox += data
        while (message := self._next_message()) is not None:
            reply = respond(message, "tcp", self.address)
            if reply is not None:
                self._outbox += len(reply).to_bytes(_TCP_LENGTH_PREFIX, "big") + reply
        return True

    def flush(self) -> None:
        if not self._outbox:
            return
        try:
            sent = self.sock.send(self._outbox)
        except BlockingIOError:
            return  # the client is slow to read; EVENT_WRITE brings us back
        del self._outbox[:sent]

    def _next_message(self) -> bytes | None:
        if len(self._inbox) < _TCP_LENGTH_PREFIX:
            return None
        size = int.from_bytes(self._inbox[:_TCP_LENGTH_PREFIX], "big")
        end = _TCP_LENGTH_PREFIX + size
        if len(self._inbox) < end:
            return None
        message = bytes(self._inbox[_TCP_LENGTH_PREFIX:end])
        del self._inbox[:end]
        return message


def _bind_udp_and_tcp(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """Bind UDP and TCP on one port; with ``port=0``, retry until a port is free for both."""
    attempts = _BIND_ATTEMPTS if port == 0 else 1
    for _ in range(attempts):
        tcp = bind_socket(host, port, socket.SOCK_STREAM)
        try:
            udp = bind_socket(host, tcp.getsockname()[1], socket.SOCK_DGRAM)
        except OSError as exc:
            tcp.close()
            if exc.errno != errno.EADDRINUSE or port != 0:
                raise TestbedError(f"DNS server cannot bind {host}:{port}: {exc}") from exc
            continue
        tcp.listen(64)
        return udp, tcp
    raise TestbedError(f"no port free for both UDP and TCP on {host}")


def _name(text: str) -> dns.name.Name:
    try:
        name = dns.name.from_text(text)  # relative names are taken as absolute
    except dns.exception.DNSException as exc:
        raise ConfigError("name", text, "a DNS name such as hub-a.device-sdk.test") from exc
    if name == dns.name.root:
        raise ConfigError("name", text, "a name other than the root")
    return name


def _display(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _strings(field: str, values: Sequence[str]) -> Sequence[str]:
    if isinstance(values, str):  # a str is a Sequence[str] of its characters
        raise ConfigError(field, values, "a list of strings, not a string")
    return values


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise ConfigError("addresses", text, "IPv4 or IPv6 literals") from exc


def _srv_rdata(target: SrvTarget) -> dns.rdata.Rdata:
    fields = {"priority": target.priority, "weight": target.weight, "port": target.port}
    for field, value in fields.items():
        if not 0 <= value <= 65535:
            raise ConfigError(field, value, "0 to 65535")
    target_name = _name(target.target).to_text()  # absolute, with the final dot
    return _rdata(
        dns.rdatatype.SRV, f"{target.priority} {target.weight} {target.port} {target_name}"
    )


def _rdata(rdtype: dns.rdatatype.RdataType, text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(_IN, rdtype, text)


def _rdataset(ttl: int, rdatas: Sequence[dns.rdata.Rdata]) -> dns.rdataset.Rdataset:
    if not 0 <= ttl <= _MAX_TTL:
        raise ConfigError("ttl", ttl, f"0 to {_MAX_TTL} seconds")
    return dns.rdataset.from_rdata_list(ttl, rdatas)


def _max_size(query: dns.message.Message, transport: str) -> int:
    if transport == "tcp":
        return 65535
    if query.edns >= 0:
        return max(_CLASSIC_UDP_PAYLOAD, query.payload)
    return _CLASSIC_UDP_PAYLOAD


def _to_wire(response: dns.message.Message, max_size: int) -> bytes:
    try:
        return response.to_wire(max_size=max_size)
    except dns.exception.TooBig:
        # Too big for this UDP query: send an empty answer with TC set, so the
        # client retries over TCP (RFC 1035 4.2.1, RFC 7766).
        response.answer.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=max_size)
