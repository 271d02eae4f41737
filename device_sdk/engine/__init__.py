"""The engine: the recovery path and its supervision, in one room.

One engine thread owns the network (:mod:`.recovery`). Around it:

- :mod:`.hub_sources`: where hubs come from (the configured list, the concierge,
  DNS SRV) and the failback probes;
- :mod:`.dialer`: resolve fresh, race the addresses, dial while TLS checks the FQDN;
- :mod:`.link_session`: the books of one established link;
- :mod:`.supervision`: the one boundary where anything raised is classified;
- :mod:`.dispatch` and :mod:`.side_tasks`: application callbacks and short
  blocking checks, each off the engine thread.

Both client faces use :class:`Engine`; nothing here is public API.
"""

from device_sdk.engine.recovery import Engine, EventCallback, MessageHandler, open_outbox

__all__ = ["Engine", "EventCallback", "MessageHandler", "open_outbox"]
