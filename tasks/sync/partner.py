"""A partner as the sync engine knows it: its name, its streams and how to reach it.

Every partner has the same anatomy (as dlt's verified sources do): a client
(:class:`~connectors.sync.client.PartnerClient`), its streams, its rules, its settings. The
engine's tasks take a :class:`Partner` and build the client inside, from the run's settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from config.settings import HausflowSettings
from connectors.sync.client import PartnerClient
from connectors.sync.streams import Stream


@dataclass(frozen=True)
class Partner:
    """One partner of the sync engine.

    Args:
        name: the partner (``portal``): its name in the state store, the protocol and the artifacts.
        streams: its entities, each with its place in the write order.
        connect: builds the partner's client from the run's settings (inside each task).
    """

    name: str
    streams: tuple[Stream, ...]
    connect: Callable[[HausflowSettings], PartnerClient]

    @property
    def by_name(self) -> dict[str, Stream]:
        """The streams by entity name."""
        return {s.name: s for s in self.streams}

    @property
    def entities(self) -> tuple[str, ...]:
        """The entity names in write order."""
        return tuple(s.name for s in sorted(self.streams, key=lambda s: s.write_order))
