"""Partitions of a scaled-out sync (tasks/partitions.py): object ranges, who owns which record,
and partition runs in one process giving the portal exactly what one run over everything gives.

The same on the real setup (a Prefect server on PostgreSQL, a process work pool, workers) is in
tests/test_scale_out.py.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from connectors.erp import demo
from connectors.erp.database import make_engine
from connectors.portal import PortalClient
from connectors.portal.streams import STREAMS
from flows.portal_sync import run_portal_sync
from flows.scale_out import MASTER_PHASES, object_weights
from sandbox.portal.server import SandboxServer
from tasks.partitions import Partition, object_key, split_objects
from tests.portal_env import BUSINESS_DATE, portal_content, portal_env


def test_object_numbers_sort_as_numbers_then_text() -> None:
    assert sorted(["10", "9", "A-2", "100", "A-10"], key=object_key) == ["9", "10", "100", "A-2", "A-10"]


def test_ranges_are_contiguous_cover_every_object_and_share_the_units() -> None:
    weights = {str(n): (50 if n < 10 else 1) for n in range(1, 101)}  # ten big objects first
    ranges = split_objects(weights, 3)
    assert len(ranges) == 3
    parts = [Partition(i, 3, a, b) for i, (a, b) in enumerate(ranges)]
    owners = Counter(next(i for i, p in enumerate(parts) if p.holds_object(o)) for o in weights)
    assert sum(owners.values()) == 100
    assert all(sum(p.holds_object(o) for p in parts) == 1 for o in weights)  # each object once
    load = [sum(weights[o] + 1 for o in weights if p.holds_object(o)) for p in parts]
    assert max(load) - min(load) <= 52  # within one big object of each other
    assert split_objects({"1": 3}, 4) == [("1", "1")]  # never more ranges than objects
    assert split_objects({}, 2) == []


def test_a_contact_belongs_to_the_partition_that_holds_all_its_contracts_or_to_none() -> None:
    parts = [Partition(0, 2, "1", "5"), Partition(1, 2, "6", "9")]

    def contact(*objects: str) -> dict[str, Any]:
        return {"id": "P1", "contracts": [{"propertyId": o, "unitId": f"{o}-1"} for o in objects]}

    def owners(payload: dict[str, Any] | None) -> list[int]:
        return [p.index for p in parts if p.owns("contacts", "P1", payload)]

    assert owners(contact("2", "5")) == [0]
    assert owners(contact("7")) == [1]
    assert owners(contact("2", "7")) == []  # names units of both: the closing run writes it
    assert owners(contact()) == [] and owners(None) == []
    assert [p.index for p in parts if p.owns("units", "7-1", {"propertyId": "7"})] == [1]


def test_a_partition_parameter_is_checked() -> None:
    with pytest.raises(ValueError, match="lacks first, last"):
        Partition.of({"index": 0, "count": 2})
    with pytest.raises(ValueError, match=r"index must lie in 0\.\.1"):
        Partition.of({"index": 2, "count": 2, "first": "1", "last": "2"})
    with pytest.raises(ValueError, match="is empty"):
        Partition(0, 1, "9", "1")


EXCHANGE = ("documents", "tickets", "bulletin_posts", "comments")
WITH_DOCUMENTS = {
    "HAUSFLOW_LICENCES__DOCUMENTS_MESSAGES": "true",
    "HAUSFLOW_PORTAL__NOTIFY_UNREGISTERED_BY_EMAIL": "false",  # no mail server in this test
}


def content(sandbox: SandboxServer) -> dict[str, dict[str, dict[str, Any]]]:
    """What the portal holds as hausflow wrote it: master data and the exchange's records."""
    held = portal_content(sandbox)
    client = PortalClient(sandbox.base_url, sandbox.key, sandbox.secret)
    for entity in EXCHANGE:
        records = client.list_records(entity, include_archived=entity == "bulletin_posts")
        held[entity] = {r["id"]: STREAMS[entity].project(r) for r in records}
    return held


@pytest.mark.usefixtures("prefect_harness")
def test_partition_runs_give_the_portal_what_one_run_gives(
    sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two partitions, the phases in turn (documents in the second), then the closing run: the
    portal holds exactly what a single run over everything leaves, with as many writes of each
    entity, none twice, no file uploaded twice; the partition runs wrote every property and unit
    and nearly all contacts and documents, the closing run what names several partitions."""
    folder = tmp_path_factory.mktemp("partitions")
    erp_url = f"sqlite:///{folder}/erp.sqlite"
    demo.generate_erp(make_engine(erp_url), persons=300, seed=7, business_date=BUSINESS_DATE)
    single = SandboxServer(db_url=f"sqlite:///{folder}/single.sqlite").start()
    try:
        with portal_env(single, erp_url, f"sqlite:///{folder}/single-state.sqlite", **WITH_DOCUMENTS):
            alone = run_portal_sync(profile="test")
        expected = content(single)
        single_counts = single.counters()
    finally:
        single.stop()
    sandbox.reset()
    with portal_env(sandbox, erp_url, f"sqlite:///{folder}/state.sqlite", **WITH_DOCUMENTS):
        from config.settings import load_settings

        ranges = split_objects(object_weights(load_settings("test")), 2)
        parts = [Partition(i, 2, a, b) for i, (a, b) in enumerate(ranges)]
        summaries: list[dict[str, Any]] = []
        for phase in (*MASTER_PHASES, ("documents",)):
            for part in parts:
                summaries.append(
                    run_portal_sync(profile="test", partition=part.parameter(), entities=list(phase))
                )
        before_closing = sandbox.counters()
        closing = run_portal_sync(profile="test")
    assert alone["failed"] == 0 and closing["failed"] == 0
    assert content(sandbox) == expected
    counters = sandbox.counters()
    assert counters["duplicate_writes"] == 0
    assert max(counters["uploads_by_document"].values()) == 1
    assert counters["uploads"] == single_counts["uploads"]
    assert counters["writes_by_entity"] == single_counts["writes_by_entity"]
    by_partitions, by_single = before_closing["writes_by_entity"], single_counts["writes_by_entity"]
    for entity in ("properties", "units"):
        assert by_partitions[entity] == by_single[entity], entity
    assert 0.8 * by_single["contacts"] <= by_partitions["contacts"] < by_single["contacts"]  # some span both
    assert 0.8 * by_single["documents"] <= by_partitions["documents"] <= by_single["documents"]
    assert "responsibilities" not in by_partitions
    assert all(s["failed"] == 0 for s in summaries)
    assert closing["quarantined"] == alone["quarantined"] and closing["skipped"] == alone["skipped"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_partition_run_writes_only_its_share_of_entities(sandbox: SandboxServer, tmp_path: Any) -> None:
    """Tickets, e-mails, responsibilities and the portal's tickets name records of several
    partitions: a partition run refuses them (and a run without entities) before it reads anything."""
    erp_url = f"sqlite:///{tmp_path}/erp.sqlite"  # never read: the run stops before
    part = Partition(0, 2, "1001", "1005").parameter()
    with portal_env(sandbox, erp_url, f"sqlite:///{tmp_path}/state.sqlite"):
        for entities in (None, ["units", "responsibilities"], ["tickets"]):
            with pytest.raises(
                ValueError, match="a partition run writes only contacts, documents, properties, units"
            ):
                run_portal_sync(profile="test", partition=part, entities=entities)
