"""The public local testbed: real mosquitto hubs, an authoritative DNS server and
a throwaway CA on loopback, for integration tests of device apps (ours and yours).

Use :class:`Testbed` directly, or the pytest fixtures of
:mod:`device_sdk.testbed.pytest_plugin` (registered automatically when
device_sdk is installed).
"""

from device_sdk.testbed.bed import (
    DOMAIN,
    FAST_FAILOVER,
    FAST_LIVENESS,
    FAST_RETRY,
    IMPOSTOR,
    Testbed,
    TestbedHub,
)
from device_sdk.testbed.broker import BrokerSpec, BrokerTls, MosquittoBroker, find_mosquitto
from device_sdk.testbed.collector import Collector
from device_sdk.testbed.concierge_cluster import ConciergeCluster
from device_sdk.testbed.dns_server import DnsServer, SrvTarget
from device_sdk.testbed.dps_service import DpsService, Enrollment
from device_sdk.testbed.etcd_cluster import EtcdCluster, EtcdMember, EtcdTimings, find_etcd
from device_sdk.testbed.hostile_hub import HostileHub
from device_sdk.testbed.http_proxy import HttpProxy
from device_sdk.testbed.iothub_front import IotHubFront
from device_sdk.testbed.link_shaper import LINK_PROFILES, LinkProfile, link_profile
from device_sdk.testbed.pki import CertificateAuthority, ServerCertificate
from device_sdk.testbed.proxy import FaultProxy
from device_sdk.testbed.tls_listener import TlsProbeListener
from device_sdk.testbed.websocket_bridge import WebSocketBridge, find_websockify

__all__ = [
    "DOMAIN",
    "FAST_FAILOVER",
    "FAST_LIVENESS",
    "FAST_RETRY",
    "IMPOSTOR",
    "LINK_PROFILES",
    "BrokerSpec",
    "BrokerTls",
    "CertificateAuthority",
    "Collector",
    "ConciergeCluster",
    "DnsServer",
    "DpsService",
    "Enrollment",
    "EtcdCluster",
    "EtcdMember",
    "EtcdTimings",
    "FaultProxy",
    "HostileHub",
    "HttpProxy",
    "IotHubFront",
    "LinkProfile",
    "MosquittoBroker",
    "ServerCertificate",
    "SrvTarget",
    "Testbed",
    "TestbedHub",
    "TlsProbeListener",
    "WebSocketBridge",
    "find_etcd",
    "find_mosquitto",
    "find_websockify",
    "link_profile",
]
