"""A verified concierge document always becomes a hub set the failover machine can take.

Document hub names belong to the concierge, so they may collide with the
device's own: the device renames them deterministically, and anything that
still would not fit is refused as InvalidHubSet before it is recorded. No
network: documents are built and signed in memory.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sdk.concierge.document import DocumentHub, EndpointDocument
from device_sdk.concierge.fetch import ConciergeFetcher
from device_sdk.concierge.sequence_store import SequenceStore
from device_sdk.concierge.settings import ConciergeSettings
from device_sdk.concierge.signing import sign_document
from device_sdk.concierge.source import ConciergeSource, check_hub_set, map_document
from device_sdk.concierge.trust import ConciergeTrust
from device_sdk.config import HubEndpoint
from device_sdk.core import failover as fsm
from device_sdk.errors import DocumentRejected, HubNotAllowed, InvalidHubSet

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
PORT = 8883


def concierge_settings(**overrides: object) -> ConciergeSettings:
    values: dict[str, object] = {
        "url": "https://concierge.example.com/v1/endpoint",
        "trust": ConciergeTrust(keys={"k1": PUBLIC}, allowed_hubs=("*.example.com",)),
    }
    return ConciergeSettings(**(values | overrides))  # type: ignore[arg-type]


def own(*pairs: tuple[str, str]) -> tuple[HubEndpoint, ...]:
    return tuple(HubEndpoint(name=name, fqdn=fqdn, port=PORT) for name, fqdn in pairs)


OWN = own(("primary", "primary.example.com"), ("secondary", "secondary.example.com"))


def document(
    hubs: dict[str, str], *, active: str, sequence: int = 5, tls: bool = True
) -> EndpointDocument:
    now = int(time.time())
    return EndpointDocument(
        format_version=1,
        sequence=sequence,
        issued_at=now,
        expires_at=now + 60,
        scope=None,
        active_hub=active,
        hubs={name: DocumentHub(fqdn=fqdn, port=PORT, tls=tls) for name, fqdn in hubs.items()},
    )


def machine_takes(own_hubs: tuple[HubEndpoint, ...], hubs: tuple[HubEndpoint, ...], active: str):  # type: ignore[no-untyped-def]
    """Feed the real failover machine what the engine would; it raises if the set is bad."""
    machine = fsm.FailoverMachine([hub.name for hub in own_hubs], fsm.FailoverPolicy())
    machine.handle(fsm.Start(), 0.0)
    machine.handle(fsm.Connected(hub=own_hubs[0].name), 0.0)
    machine.handle(fsm.HubsChanged(hubs=tuple(hub.name for hub in hubs)), 1.0)
    machine.handle(fsm.ConciergeNamed(hub=active), 1.0)
    return machine


def test_names_that_collide_after_renaming_get_the_next_free_name() -> None:
    # The attack: "primary" somewhere else (renamed c-primary before), and a "c-primary" too.
    doc = document(
        {"primary": "other.example.com", "c-primary": "third.example.com"}, active="primary"
    )
    answer = map_document(doc, OWN, concierge_settings())
    by_name = {hub.name: hub.fqdn for hub in answer.hubs}
    assert [hub.name for hub in answer.hubs] == ["primary", "secondary", "c-primary", "c2-primary"]
    assert by_name["c-primary"] == "third.example.com"  # a document's own name stays its own
    assert by_name["c2-primary"] == "other.example.com"
    assert by_name["primary"] == "primary.example.com"  # the device's hubs never change
    assert answer.active == "c2-primary"
    assert machine_takes(OWN, answer.hubs, answer.active).home_hub == "c2-primary"


def test_long_names_cut_to_63_characters_stay_distinct() -> None:
    first, second = "h" * 61 + "aa", "h" * 61 + "bb"  # equal once "c-" pushes them past 63
    own_hubs = own((first, "one.example.com"), (second, "two.example.com"))
    doc = document({first: "x.example.com", second: "y.example.com"}, active=second)
    answer = map_document(doc, own_hubs, concierge_settings())
    added = [hub.name for hub in answer.hubs[2:]]
    assert added == ["c-" + "h" * 61, "c2-" + "h" * 60]
    assert all(len(name) <= 63 for name in added)
    machine_takes(own_hubs, answer.hubs, answer.active)


def test_the_member_order_of_a_document_does_not_change_the_names() -> None:
    hubs = {"primary": "other.example.com", "c-primary": "third.example.com", "z": "z.example.com"}
    forward = map_document(document(hubs, active="z"), OWN, concierge_settings())
    backward = map_document(
        document(dict(reversed(hubs.items())), active="z"), OWN, concierge_settings()
    )
    assert forward == backward


def test_a_document_hub_at_a_device_hubs_address_is_that_hub_whatever_the_case() -> None:
    doc = document({"eu": "SECONDARY.Example.com", "us": "primary.example.com"}, active="eu")
    answer = map_document(doc, OWN, concierge_settings())
    assert answer.hubs == OWN  # nothing added: both are hubs the device has
    assert answer.active == "secondary"


def test_a_plain_hub_is_refused_unless_allowed() -> None:
    doc = document({"plain": "plain.example.com"}, active="plain", tls=False)
    with pytest.raises(HubNotAllowed):
        map_document(doc, OWN, concierge_settings())
    answer = map_document(doc, OWN, concierge_settings(allow_plain_hubs=True))
    assert answer.hubs[-1].tls is None


@pytest.mark.parametrize(
    ("names", "active"),
    [((), "primary"), (("primary", "primary"), "primary"), (("primary", "b"), "c")],
    ids=["empty", "duplicate", "active-missing"],
)
def test_a_set_the_machine_cannot_take_is_an_invalid_hub_set(
    names: tuple[str, ...], active: str
) -> None:
    hubs = [HubEndpoint(name=name, fqdn=f"{n}.example.com") for n, name in enumerate(names)]
    with pytest.raises(InvalidHubSet) as caught:
        check_hub_set(hubs, active)
    assert isinstance(caught.value, DocumentRejected)  # reported as a security event


# Names and places drawn from small pools, so collisions are the common case.
_NAMES = st.sampled_from(["primary", "secondary", "c-primary", "c2-primary", "c-c-primary", "x"])
_PLACES = st.sampled_from(["primary", "secondary", "other", "third", "Primary"])


@settings(max_examples=300, deadline=None)
@given(
    own_pairs=st.lists(
        st.tuples(_NAMES, _PLACES), min_size=1, max_size=4, unique_by=lambda p: p[0]
    ),
    doc_pairs=st.dictionaries(_NAMES, _PLACES, min_size=1, max_size=6),
    data=st.data(),
)
def test_every_verified_document_gives_a_set_the_machine_takes(
    own_pairs: list[tuple[str, str]], doc_pairs: dict[str, str], data: st.DataObject
) -> None:
    own_hubs = own(*((name, f"{place}.example.com") for name, place in own_pairs))
    active = data.draw(st.sampled_from(sorted(doc_pairs)))
    doc = document({n: f"{p}.example.com" for n, p in doc_pairs.items()}, active=active)
    answer = map_document(doc, own_hubs, concierge_settings())
    assert answer.hubs[: len(own_hubs)] == own_hubs
    assert answer == map_document(doc, own_hubs, concierge_settings())  # deterministic
    machine_takes(own_hubs, answer.hubs, answer.active)


# --------------------------------------------------------------------------- ConciergeSource


def test_a_document_refused_while_mapping_is_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "concierge.seq"
    source = ConciergeSource(concierge_settings(state_file=str(state)), OWN)
    served: list[bytes] = []
    monkeypatch.setattr(ConciergeFetcher, "fetch", lambda self: served[-1])

    refused = document({"plain": "plain.example.com"}, active="plain", sequence=9, tls=False)
    served.append(sign_document(refused, KEY, "k1"))
    with pytest.raises(HubNotAllowed):
        source.ask()
    assert SequenceStore(state).load() is None  # a lower sequence may still follow

    served.append(
        sign_document(document({"a": "a.example.com"}, active="a", sequence=7), KEY, "k1")
    )
    assert source.ask().active == "a"
    assert SequenceStore(state).load() == 7
