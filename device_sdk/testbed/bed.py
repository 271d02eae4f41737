"""The whole local testbed in one object: hubs, their DNS, and a throwaway CA.

:class:`Testbed` starts one mosquitto broker per hub, each on its own loopback
address but on the same ports, so flipping a hub's DNS record from one broker
to another is exactly what a regional failover behind a stable FQDN looks
like. An authoritative DNS server on loopback serves the hubs' FQDNs; the
device resolves them there, fresh, on every attempt. With ``tls=True`` each
broker also has a TLS listener whose certificate names only its hub's FQDN.
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from device_sdk.concierge.document import DocumentHub
from device_sdk.concierge.service import (
    ConciergeService,
    ConciergeServiceConfig,
    HealthProbeSettings,
)
from device_sdk.concierge.settings import ConciergeSettings
from device_sdk.concierge.signing import write_keypair
from device_sdk.concierge.trust import ConciergeTrust
from device_sdk.config import ClientConfig, DnsSettings, HubEndpoint, TlsSettings
from device_sdk.core.failover import FailoverPolicy
from device_sdk.core.liveness import LivenessPolicy
from device_sdk.core.retry import RetryPolicy
from device_sdk.errors import TestbedError
from device_sdk.identity.provider import CredentialProvider
from device_sdk.testbed.broker import DEFAULT_LOG_TYPES, BrokerSpec, BrokerTls, MosquittoBroker
from device_sdk.testbed.collector import Collector
from device_sdk.testbed.concierge_cluster import ConciergeCluster
from device_sdk.testbed.dns_server import DnsServer
from device_sdk.testbed.lifecycle import StartsInContext
from device_sdk.testbed.pki import CertificateAuthority
from device_sdk.testbed.ports import pick_free_ports
from device_sdk.testbed.websocket_bridge import WebSocketBridge

DOMAIN = "hubs.device-sdk.test"
_CONCIERGE_KID = "testbed"
# A name no testbed certificate carries: point it at a broker to stage a DNS hijack.
IMPOSTOR = f"impostor.{DOMAIN}"

# Policies for tests and drills on loopback, where a round trip is well under a
# millisecond: tight deadlines, short dwell, quick probes. Field profiles are
# far more patient.
FAST_LIVENESS = LivenessPolicy(
    keepalive=5.0,
    deadline_floor=0.25,
    deadline_ceiling=2.0,
    initial_deadline=0.5,
    connect_timeout=0.5,
)
FAST_RETRY = RetryPolicy(initial=0.05, maximum=1.0, long_delay=5.0, stable_after=1.0)
FAST_FAILOVER = FailoverPolicy(
    failover_after_failures=2,
    failover_after_seconds=5.0,
    failback_dwell_seconds=2.0,
    failback_healthy_probes=2,
    permanent_penalty_seconds=30.0,
    stable_after_seconds=1.0,
)


@dataclass(frozen=True, slots=True)
class TestbedHub:
    """One hub of the testbed: its name, FQDN, loopback address and broker."""

    __test__ = False

    name: str
    fqdn: str
    address: str
    broker: MosquittoBroker


class Testbed(StartsInContext):
    """Brokers, DNS and a CA on loopback for integration tests and drills.

    ``hubs`` names the hubs in priority order; hub *i* listens on 127.0.0.(*first_octet* + *i*).
    ``users`` maps a hub name to the only user names and passwords it accepts.
    ``broker_log_types`` overrides mosquitto's log types (``("all",)`` logs every packet).
    ``broker_config`` maps a hub name to extra mosquitto configuration lines for it
    (``BrokerSpec.extra_config``), e.g. an ``acl_file`` that refuses some topics.
    ``concierge=True`` also runs the reference concierge (:attr:`concierge`), naming
    these hubs and signing with a throwaway key; :meth:`concierge_settings` trusts it.
    ``concierge_replicas`` > 1 or ``concierge_store="etcd"`` runs replicas under one
    DNS name instead (:attr:`concierge_cluster`, each on its own loopback address),
    sharing their state in a real 3-member etcd cluster with ``"etcd"``.
    ``client_certificates=True`` (implies ``tls``) makes the TLS listeners require a
    device certificate from the testbed CA (:meth:`device_certificate`).
    Everything it starts, it stops (by PID) in :meth:`stop`, also on errors.
    """

    __test__ = False

    def __init__(
        self,
        *,
        hubs: Sequence[str] = ("primary", "secondary"),
        tls: bool = False,
        users: Mapping[str, Mapping[str, str]] | None = None,
        work_dir: Path | str | None = None,
        first_octet: int = 2,
        dns_ttl: int = 1,
        broker_log_types: Sequence[str] | None = None,
        broker_config: Mapping[str, Sequence[str]] | None = None,
        concierge: bool = False,
        client_certificates: bool = False,
        concierge_replicas: int = 1,
        concierge_store: str = "file",
    ) -> None:
        self._hub_names = tuple(hubs)
        self._tls = tls or client_certificates
        self._client_certificates = client_certificates
        self._users = dict(users or {})
        self._first_octet = first_octet
        self._dns_ttl = dns_ttl
        self._log_types = tuple(broker_log_types or DEFAULT_LOG_TYPES)
        self._broker_config = {name: tuple(lines) for name, lines in (broker_config or {}).items()}
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="device-sdk-testbed-"))
        self._stack = ExitStack()
        self._hubs: dict[str, TestbedHub] = {}
        self.ca: CertificateAuthority | None = None
        self.ca_file: Path | None = None
        self.dns: DnsServer | None = None
        self._with_concierge = concierge or concierge_replicas > 1 or concierge_store == "etcd"
        if concierge_store not in ("file", "etcd"):
            raise TestbedError(f"concierge_store is 'file' or 'etcd', not {concierge_store!r}")
        self._concierge_replicas = concierge_replicas
        self._concierge_store = concierge_store
        self.concierge_cluster: ConciergeCluster | None = None
        self.concierge: ConciergeService | None = None
        self.concierge_token_file: Path | None = None
        self._concierge_key: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        addresses = [f"127.0.0.{self._first_octet + i}" for i in range(len(self._hub_names))]
        plain_port, tls_port = pick_free_ports(2, addresses)
        if self._tls:
            self.ca = CertificateAuthority.create()
            self.ca_file = self.ca.write_to(self.work_dir)
        self.dns = self._stack.enter_context(DnsServer(host="127.0.0.1", port=0))
        for name, address in zip(self._hub_names, addresses, strict=True):
            fqdn = f"{name}.{DOMAIN}"
            spec = BrokerSpec(
                name=name,
                host=address,
                port=plain_port,
                tls=self._broker_tls(name, tls_port),
                users=self._users.get(name),
                log_types=self._log_types,
                extra_config=self._broker_config.get(name, ()),
            )
            broker = MosquittoBroker(spec, work_dir=self.work_dir / name)
            self._stack.callback(broker.close)
            broker.start()
            self._hubs[name] = TestbedHub(name, fqdn, address, broker)
            self.dns.set_address(fqdn, [address], ttl=self._dns_ttl)
        if self._with_concierge:
            self._start_concierge()

    def _start_concierge(self) -> None:
        """The reference concierge on loopback, signing with a throwaway key."""
        directory = self.work_dir / "concierge"
        directory.mkdir(exist_ok=True)
        hubs = {
            hub.name: DocumentHub(
                fqdn=hub.fqdn,
                port=hub.broker.tls_port if self._tls and hub.broker.tls_port else hub.broker.port,
                tls=self._tls,
            )
            for hub in self._hubs.values()
        }
        health = HealthProbeSettings(
            dns=self.dns_settings(),
            timeout=0.5,
            cache_seconds=0.0,
            ca_file=str(self.ca_file) if self.ca_file else None,
        )
        if self._concierge_replicas > 1 or self._concierge_store == "etcd":
            assert self.dns is not None
            cluster = ConciergeCluster(
                hubs=hubs,
                directory=directory,
                dns=self.dns,
                name=f"concierge.{DOMAIN}",
                health=health,
                replicas=self._concierge_replicas,
                etcd=self._concierge_store == "etcd",
            )
            self._stack.callback(cluster.stop)
            cluster.start()
            self.concierge_cluster = cluster
            self.concierge = cluster.replicas[0]
            self.concierge_token_file = cluster.token_file
            return
        keys = write_keypair(directory, _CONCIERGE_KID)
        self._concierge_key = keys.public_key
        self.concierge_token_file = directory / "operator.token"
        self.concierge_token_file.write_text(secrets.token_urlsafe(24))
        config = ConciergeServiceConfig(
            state_file=directory / "state.json",
            signing_key_file=keys.private_key_file,
            kid=_CONCIERGE_KID,
            token_file=self.concierge_token_file,
            hubs=hubs,
            ttl=60,
            port=0,
            health=health,
        )
        self.concierge = ConciergeService(config)
        self._stack.callback(self.concierge.stop)
        self.concierge.start()

    def _broker_tls(self, name: str, port: int) -> BrokerTls | None:
        if self.ca is None:
            return None
        # Every broker may serve every hub FQDN, as the regions of one service do: that
        # is what lets a DNS flip move a hub's name to another broker. A name outside
        # the testbed (see IMPOSTOR) still fails verification.
        names = [f"{hub}.{DOMAIN}" for hub in self._hub_names]
        files = self.ca.issue_server_certificate(names).write_to(self.work_dir, stem=name)
        client_ca = self.ca_file if self._client_certificates else None
        return BrokerTls(
            cert_file=files.cert_file, key_file=files.key_file, port=port, client_ca_file=client_ca
        )

    def device_certificate(self, common_name: str, *, stem: str | None = None) -> tuple[str, str]:
        """Issue a device certificate from the testbed CA: (cert file, key file), key 0600.

        With ``client_certificates=True`` the hubs require one, and report its CN
        as the client's user name in ``broker.clients_connected()``.
        """
        if self.ca is None:
            raise TestbedError("this testbed was started without TLS")
        files = self.ca.issue_client_certificate(common_name).write_to(
            self.work_dir, stem=stem or f"device-{common_name}"
        )
        return str(files.cert_file), str(files.key_file)

    def websocket_bridge(self, name: str, *, tls: bool | None = None) -> WebSocketBridge:
        """A started websockify bridge in front of hub ``name``'s plain MQTT port, on the
        hub's own address: ``wss`` with a certificate for the hub's FQDN when the
        testbed has TLS (or ``tls=True``), else ``ws``. Stopped with the testbed.

        A device reaches it with ``Transport(scheme="wss", port=bridge.port)`` in the
        hub's ``transports``; the hub's name resolves to the same address.
        """
        hub = self.hub(name)
        use_tls = self._tls if tls is None else tls
        files = None
        if use_tls:
            if self.ca is None:
                raise TestbedError("this testbed was started without TLS")
            names = [f"{other}.{DOMAIN}" for other in self._hub_names]
            issued = self.ca.issue_server_certificate(names)
            written = issued.write_to(self.work_dir, stem=f"{name}-websocket")
            files = (written.cert_file, written.key_file)
        bridge = WebSocketBridge(
            hub.address,
            hub.broker.port,
            listen_host=hub.address,
            tls=files,
            work_dir=self.work_dir / f"{name}-websocket",
        )
        self._stack.callback(bridge.stop)
        bridge.start()
        return bridge

    def stop(self) -> None:
        """Stop every process and thread the testbed started; remove its own work dir."""
        self._stack.close()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- what tests use ----------------------------------------------------------------------

    def hub(self, name: str) -> TestbedHub:
        try:
            return self._hubs[name]
        except KeyError:
            raise TestbedError(f"no hub {name!r}; the testbed has {list(self._hubs)}") from None

    @property
    def hubs(self) -> tuple[TestbedHub, ...]:
        return tuple(self._hubs.values())

    def point(self, hub: str, *, at: str) -> None:
        """Flip ``hub``'s FQDN to the address of hub ``at`` (a failover behind one FQDN)."""
        assert self.dns is not None
        self.dns.set_address(self.hub(hub).fqdn, [self.hub(at).address], ttl=self._dns_ttl)

    def endpoint(self, name: str, *, tls: bool | None = None) -> HubEndpoint:
        """The HubEndpoint a device uses for hub ``name`` (TLS when the testbed has it)."""
        hub = self.hub(name)
        use_tls = self._tls if tls is None else tls
        if use_tls:
            port = hub.broker.tls_port
            if port is None or self.ca_file is None:
                raise TestbedError("this testbed was started without tls=True")
            return HubEndpoint(
                name=name, fqdn=hub.fqdn, port=port, tls=TlsSettings(ca_file=str(self.ca_file))
            )
        return HubEndpoint(name=name, fqdn=hub.fqdn, port=hub.broker.port, tls=None)

    def dns_settings(self) -> DnsSettings:
        assert self.dns is not None
        return DnsSettings(
            nameservers=(self.dns.host,), port=self.dns.port, timeout=0.5, lifetime=1.0
        )

    def client_config(
        self,
        client_id: str,
        *,
        hubs: Sequence[str] | None = None,
        credentials: CredentialProvider | None = None,
        **overrides: Any,
    ) -> ClientConfig:
        """A ClientConfig for a device on this testbed, with the fast test policies."""
        names = self._hub_names if hubs is None else tuple(hubs)
        config = ClientConfig(
            client_id=client_id,
            hubs=tuple(self.endpoint(name) for name in names),
            dns=self.dns_settings(),
            retry=FAST_RETRY,
            failover=FAST_FAILOVER,
            liveness=FAST_LIVENESS,
            credentials=credentials,
            failback_probe_interval=0.5,
        )
        return dataclasses.replace(config, **overrides) if overrides else config

    def concierge_settings(self, **overrides: Any) -> ConciergeSettings:
        """How a device on this testbed trusts and polls the testbed's concierge."""
        cluster = self.concierge_cluster
        if cluster is not None:
            url, keys = cluster.url, dict(cluster.public_keys)
        elif self.concierge is not None and self._concierge_key is not None:
            url, keys = self.concierge.url, {_CONCIERGE_KID: self._concierge_key}
        else:
            raise TestbedError("this testbed was started without concierge=True")
        settings = ConciergeSettings(
            url=f"{url}/v1/endpoint",
            trust=ConciergeTrust(keys=keys, allowed_hubs=(f"*.{DOMAIN}",)),
            poll_interval=1.0,
            timeout=0.5,
            allow_plain_http=True,  # loopback only; devices in the field use HTTPS
            allow_plain_hubs=not self._tls,
            hub_tls=TlsSettings(ca_file=str(self.ca_file) if self.ca_file else None),
        )
        return dataclasses.replace(settings, **overrides) if overrides else settings

    def collector(self, hub: str, topic: str) -> Collector:
        """An independent subscriber on ``hub``'s broker; stopped with the testbed.

        On a hub started with ``users``, it signs in as the first of them.
        """
        broker = self.hub(hub).broker
        users = self._users.get(hub) or {}
        username, password = next(iter(users.items()), (None, None))
        collector = Collector(
            broker.host,
            broker.port,
            topic,
            name=f"collector-{hub}",
            username=username,
            password=password,
        )
        collector.start()
        self._stack.callback(collector.stop)
        return collector
