"""Partitions of a sync spread over several workers (flows/scale_out.py): who writes which record.

A partitioned sync splits the released objects into contiguous ranges of about equal size (by
their units) and runs one flow run per range. Every run applies the rules to the whole ERP (a
contact's contracts can lie in several ranges, and its payload names them all), then writes only
the records its partition *owns*:

- properties, units and documents: those of the objects in its range;
- contacts: those whose contracts all lie in its range. A contact with contracts in two ranges
  (a flat in one, a garage in another) names units of both, so it waits for the closing run,
  when every partition's units are at the portal; so does a contact without contracts.

So two partitions never write the same partner record, and a partition's records name only
records it wrote itself (a contact its units, a unit its property, in write order) or that the
portal already holds. What names records of other partitions (the responsibilities: caretakers
of any range), archiving, withdrawals and anonymisations are left to the run that sees the whole
desired state (the parent's closing run).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tasks.portal_rules import DesiredState

_DIGITS = re.compile(r"\d+")


def object_key(object_no: str) -> tuple[Any, ...]:
    """Sort key of an object number: numbers in numeric order ("9" before "10"), then the rest."""
    text = str(object_no)
    if text.isdigit():
        return (0, int(text), text)
    return (1, [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)], text)


def split_objects(weights: Mapping[str, int], count: int) -> list[tuple[str, str]]:
    """Contiguous ranges (first, last) of the objects, in :func:`object_key` order, at most
    ``count`` of them, each of about the same total weight (an object weighs its units + 1).

    Fewer ranges come back when there are fewer objects than ``count``; none when there are none.
    """
    ordered = sorted(weights, key=object_key)
    if not ordered or count < 1:
        return []
    count = min(count, len(ordered))
    total = sum(weights[o] + 1 for o in ordered)
    ranges: list[tuple[str, str]] = []
    start = 0
    acc = 0  # weight of the objects before this one
    for i, obj in enumerate(ordered):
        weight = weights[obj] + 1
        target = total * (len(ranges) + 1) / count  # where the current range should end
        must = len(ordered) - i == count - len(ranges) - 1  # just one object left per range to come
        closer_before = target - acc < acc + weight - target
        if len(ranges) < count - 1 and i > start and (must or (acc + weight >= target and closer_before)):
            ranges.append((ordered[start], ordered[i - 1]))
            start = i
        acc += weight
    ranges.append((ordered[start], ordered[-1]))
    return ranges


@dataclass(frozen=True)
class Partition:
    """One partition of a partitioned run: its object range."""

    index: int
    count: int
    first: str
    last: str
    _first_key: tuple[Any, ...] = field(init=False, repr=False, compare=False)
    _last_key: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(
                f"partition {self.index} of {self.count}: the index must lie in 0..{self.count - 1}"
            )
        object.__setattr__(self, "_first_key", object_key(self.first))
        object.__setattr__(self, "_last_key", object_key(self.last))
        if self._first_key > self._last_key:
            raise ValueError(f"partition {self.index}: object range {self.first}..{self.last} is empty")

    @classmethod
    def of(cls, parameter: Mapping[str, Any]) -> Partition:
        """From the flow parameter ``{"index": i, "count": n, "first": "...", "last": "..."}``."""
        missing = {"index", "count", "first", "last"} - set(parameter)
        if missing:
            raise ValueError(f"partition parameter lacks {', '.join(sorted(missing))}: {dict(parameter)}")
        return cls(
            int(parameter["index"]), int(parameter["count"]), str(parameter["first"]), str(parameter["last"])
        )

    def parameter(self) -> dict[str, Any]:
        """The flow parameter that names this partition."""
        return {"index": self.index, "count": self.count, "first": self.first, "last": self.last}

    def holds_object(self, object_no: str) -> bool:
        """Whether the object lies in this partition's range."""
        return self._first_key <= object_key(object_no) <= self._last_key

    def objects(self, released: Iterable[str]) -> set[str]:
        """The released objects of this partition."""
        return {o for o in released if self.holds_object(o)}

    def owns(self, entity: str, ref_id: str, payload: Mapping[str, Any] | None = None) -> bool:
        """Whether this partition writes the record (see the module's docstring); a contact or a
        unit needs its payload (``None``: not this partition's)."""
        if entity == "contacts":
            contracts = (payload or {}).get("contracts") or ()
            return bool(contracts) and all(self.holds_object(str(c["propertyId"])) for c in contracts)
        if entity == "properties":
            return self.holds_object(ref_id)
        if entity == "units":
            return payload is not None and self.holds_object(str(payload["propertyId"]))
        raise ValueError(f"{entity} {ref_id}: no owner rule for this entity")

    def narrow(self, desired: DesiredState) -> DesiredState:
        """The part of ``desired`` this partition writes: its records, its held and skipped
        records, and its objects' caretakers. Withdrawals and anonymisations are left to the
        closing run over everything (nothing is withdrawn on a partial view)."""
        records = {
            entity: {rid: p for rid, p in recs.items() if self.owns(entity, rid, p)}
            for entity, recs in desired.records.items()
        }
        return replace(
            desired,
            records=records,
            skipped=[s for s in desired.skipped if self.owns(s.entity, s.ref_id, _payload(desired, s))],
            quarantine=[s for s in desired.quarantine if self.owns(s.entity, s.ref_id, _payload(desired, s))],
            notes={k: v for k, v in desired.notes.items() if k[1] in records.get(k[0], {})},
            withdraw_reasons={},
            anonymise=set(),
            caretakers={o: c for o, c in desired.caretakers.items() if self.holds_object(o)},
            keys=None,
        )


def _payload(desired: DesiredState, skip: Any) -> dict[str, Any] | None:
    return desired.records.get(skip.entity, {}).get(skip.ref_id)
