"""Concierge replicas in every "region", sharing their state in a real etcd cluster.

Replica *i* of :class:`ConciergeCluster` binds its own loopback address
(127.0.0.(41 + *i*)); the testbed's DNS server answers the concierge's one
name with an A record for each. Devices poll that name, as they would poll a
DNS traffic manager's name in the field. With ``etcd=True`` (the default), a
3-member :class:`~device_sdk.testbed.etcd_cluster.EtcdCluster` holds the
state, and every replica reads and switches it there. With ``etcd=False``,
each replica keeps its own file: the single-region set-up, or the "before"
of a migration.

``shared_key=True`` makes every replica sign with one key; otherwise each
replica has its own key id and the devices pin them all. The trade-off:
one shared key is one secret to copy into every region, and one to rotate if
any region leaks it. A key per replica confines a leak to one replica's key
id, and costs devices a longer pin list.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Self

from device_sdk.concierge.document import DocumentHub
from device_sdk.concierge.service import (
    ConciergeService,
    ConciergeServiceConfig,
    HealthProbeSettings,
)
from device_sdk.concierge.signing import write_keypair
from device_sdk.errors import TestbedError
from device_sdk.testbed.dns_server import DnsServer
from device_sdk.testbed.etcd_cluster import EtcdCluster
from device_sdk.testbed.lifecycle import StartsInContext
from device_sdk.testbed.ports import pick_free_ports

__all__ = ["ConciergeCluster"]

_FIRST_OCTET = 41


class ConciergeCluster(StartsInContext):
    """``replicas`` concierge services under one DNS name, on etcd (or each on a file)."""

    def __init__(
        self,
        *,
        hubs: Mapping[str, DocumentHub],
        directory: Path,
        dns: DnsServer,
        name: str,
        health: HealthProbeSettings,
        replicas: int = 3,
        etcd: bool = True,
        shared_key: bool = False,
        ttl: int = 60,
        dns_ttl: int = 1,
    ) -> None:
        if not 1 <= replicas <= 9:
            raise TestbedError(f"1 to 9 concierge replicas, not {replicas}")
        self._hubs = dict(hubs)
        self.directory = directory
        self._dns = dns
        self.name = name
        self._health = health
        self._count = replicas
        self._with_etcd = etcd
        self._shared_key = shared_key
        self._ttl = ttl
        self._dns_ttl = dns_ttl
        self.addresses = tuple(f"127.0.0.{_FIRST_OCTET + i}" for i in range(replicas))
        self.port = 0
        self.etcd: EtcdCluster | None = None
        self.replicas: list[ConciergeService] = []
        self.configs: list[ConciergeServiceConfig] = []
        self.public_keys: dict[str, str] = {}  # key id -> public key, as devices pin them
        self.token_file = directory / "operator.token"
        self._stack = ExitStack()

    def start(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.token_file.write_text(secrets.token_urlsafe(24))
        (self.port,) = pick_free_ports(1, self.addresses)
        store = None
        if self._with_etcd:
            self.etcd = EtcdCluster(3, work_dir=self.directory / "etcd")
            self._stack.callback(self.etcd.stop)
            self.etcd.start()
            store = "etcd://" + ",".join(self.etcd.endpoints)
        for index, address in enumerate(self.addresses):
            config = self._replica_config(index, address, store)
            self.configs.append(config)
            replica = ConciergeService(config)
            self._stack.callback(replica.stop)
            replica.start()
            self.replicas.append(replica)
        self._dns.set_address(self.name, list(self.addresses), ttl=self._dns_ttl)

    def _replica_config(
        self, index: int, address: str, store: str | None
    ) -> ConciergeServiceConfig:
        folder = self.directory / f"replica-{index + 1}"
        folder.mkdir(exist_ok=True)
        kid = "testbed" if self._shared_key else f"testbed-{index + 1}"
        keys_dir = self.directory if self._shared_key else folder
        key_file = keys_dir / f"{kid}.key"
        if not key_file.exists():
            keys = write_keypair(keys_dir, kid)
            self.public_keys[kid] = keys.public_key
        return ConciergeServiceConfig(
            state_file=folder / "state.json",
            signing_key_file=key_file,
            kid=kid,
            token_file=self.token_file,
            hubs=self._hubs,
            ttl=self._ttl,
            host=address,
            port=self.port,
            health=self._health,
            store=store,
        )

    def stop(self) -> None:
        self._stack.close()

    # -- what tests and drills use -----------------------------------------------------------

    @property
    def url(self) -> str:
        """The one URL devices poll (the name resolves to every replica)."""
        return f"http://{self.name}:{self.port}"

    def replica_url(self, index: int) -> str:
        return f"http://{self.addresses[index]}:{self.port}"

    def stop_replica(self, index: int) -> None:
        """Stop replica ``index`` (its region is gone); its address then refuses."""
        self.replicas[index].stop()

    def restart_replica(self, index: int) -> None:
        replica = ConciergeService(self.configs[index])
        self._stack.callback(replica.stop)
        replica.start()
        self.replicas[index] = replica
