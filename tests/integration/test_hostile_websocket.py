"""A hub (or a middlebox) that answers the WebSocket handshake badly gets a typed
DialError within the dial's deadline: never a hang, never an untyped exception.

Each case is a scripted peer on loopback that reads the request and answers
with one script, then holds the connection open until the test ends.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from device_sdk.adapters.cancel import Cancelled, CancelToken
from device_sdk.adapters.paho_link import LinkSettings, PahoLink
from device_sdk.config import HubEndpoint
from device_sdk.dialects.azure import azure_hub
from device_sdk.errors import DialError
from device_sdk.transports import Transport

pytestmark = pytest.mark.integration


@contextmanager
def scripted_peer(
    answer: bytes, *, repeat: int = 1, requests: list[bytes] | None = None
) -> Iterator[int]:
    """A listener that sends ``answer`` ``repeat`` times to the first client, then waits;
    the handshake request it read goes to ``requests``."""
    done = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5)

        def serve() -> None:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(0.2)
                try:
                    request = conn.recv(4096)  # the handshake request
                    if requests is not None:
                        requests.append(request)
                    for _ in range(repeat):
                        if done.is_set():
                            break
                        conn.sendall(answer)
                except OSError:
                    return
                done.wait(5)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield server.getsockname()[1]
        finally:
            done.set()
            thread.join(5)


def _link(port: int, hub: HubEndpoint | None = None) -> PahoLink:
    hub = hub or HubEndpoint(
        name="ws-hub",
        fqdn="127.0.0.1",
        tls=None,
        transports=(Transport(scheme="ws", port=port),),
    )
    settings = LinkSettings(
        client_id="ws-hostile", mqtt_version="5", keepalive=30, connect_timeout=1, inflight_window=5
    )
    return PahoLink(hub, "127.0.0.1", settings)


GOOD_STATUS = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"


@pytest.mark.parametrize(
    ("answer", "repeat"),
    [
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", 1),  # a proxy's refusal
        (GOOD_STATUS + b"Sec-WebSocket-Accept: bm90IHRoZSBrZXk=\r\n\r\n", 1),  # wrong key
        (GOOD_STATUS + b"sec-websocket-accept:no-space\r\n\r\n", 1),  # trips paho's parser
        (b"\xff\xfe\xfd\n\r\n", 1),  # not text
        (b"X-Padding: " + b"a" * 1000 + b"\r\n", 100),  # headers without end
        (b"", 1),  # silence
    ],
    ids=["403", "wrong-accept-key", "malformed-accept", "binary", "endless", "silent"],
)
def test_a_bad_handshake_answer_is_a_dial_error_within_the_deadline(
    answer: bytes, repeat: int
) -> None:
    with scripted_peer(answer, repeat=repeat) as port:
        link = _link(port)
        started = time.monotonic()
        with pytest.raises(DialError):
            link.open(time.monotonic() + 1.0)
        assert time.monotonic() - started < 2.0


def test_close_cuts_a_handshake_that_hangs_short() -> None:
    cancel = CancelToken()
    with scripted_peer(b"") as port:
        link = _link(port)
        timer = threading.Timer(0.2, cancel.cancel)
        timer.start()
        started = time.monotonic()
        try:
            with pytest.raises(Cancelled):
                link.open(time.monotonic() + 30.0, cancel)
        finally:
            timer.cancel()
            cancel.close()
        assert time.monotonic() - started < 2.0


def test_the_handshake_asks_for_mqtt_at_the_hubs_path_with_its_headers() -> None:
    # IoT Hub's way in over 443, as the Azure dialect builds it (plain here: no TLS peer).
    requests: list[bytes] = []
    with scripted_peer(b"HTTP/1.1 404 Not Found\r\n\r\n", requests=requests) as port:
        base = azure_hub("iothub", "localhost", port=port, tls=None, websockets=True)
        (_tcp, ws) = base.transports
        way = dataclasses.replace(ws, port=port, headers=(("X-Site", "plant-7"),))
        hub = dataclasses.replace(base, transports=(way,))
        with pytest.raises(DialError):
            _link(port, hub).open(time.monotonic() + 1.0)
    head = requests[0].decode("ascii").split("\r\n")
    assert head[0] == "GET /$iothub/websocket HTTP/1.1"
    fields = {line.split(": ", 1)[0].lower(): line.split(": ", 1)[1] for line in head[1:] if line}
    assert fields["sec-websocket-protocol"] == "mqtt"
    assert fields["host"] == f"localhost:{port}"  # the FQDN, never the address dialled
    assert fields["x-site"] == "plant-7"
