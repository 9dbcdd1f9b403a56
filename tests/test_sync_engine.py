"""The sync engine with a second, toy partner: the in-memory fake client behind the same
interface as the portal's, a real state store, and crashes between sending and confirming."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from config.settings import HausflowSettings
from connectors.state_store import Confirmation, ProtocolRow, StateStore
from connectors.sync.client import PartnerClient
from connectors.sync.errors import PartnerCredentialsError, PartnerTransportError
from connectors.sync.fake import FakePartnerClient
from connectors.sync.streams import Stream
from tasks.sync.load import load_batch, recover_pending
from tasks.sync.partner import Partner
from tasks.sync.plan import Plan, desired_hashes, plan_changes

ACCOUNTS = Stream("accounts", "/ws/accounts", ("id", "holder", "amount"), write_order=1)
BOOKINGS = Stream(
    "bookings",
    "/ws/bookings",
    ("id", "account", "amount"),
    write_order=2,
    archivable=False,
    parents=lambda booking: [("accounts", booking["account"])],
)


class Crash(BaseException):
    """The process dies (as SIGKILL would), here between sending and confirming."""


class CrashingStore(StateStore):
    """A state store whose next confirmation of writes dies before it commits."""

    crash_next_confirm = False

    def confirm(self, target: str, confirmations: Any, run_id: Any, protocol: Any = None) -> int | None:
        if self.crash_next_confirm and confirmations:
            self.crash_next_confirm = False
            raise Crash
        return super().confirm(target, confirmations, run_id, protocol)


def toy_partner(client: FakePartnerClient) -> Partner:
    def connect(settings: HausflowSettings) -> PartnerClient:
        return client

    return Partner("toy", (BOOKINGS, ACCOUNTS), connect)


def desired(n: int = 30) -> dict[str, dict[str, dict[str, Any]]]:
    return {
        "accounts": {f"A{i}": {"id": f"A{i}", "holder": f"Mieter {i}", "amount": 1000 + i} for i in range(n)},
        "bookings": {f"B{i}": {"id": f"B{i}", "account": f"A{i}", "amount": 100} for i in range(n)},
    }


def plan_for(partner: Partner, store: StateStore, wanted: dict[str, dict[str, dict[str, Any]]]) -> Plan:
    state = {e: store.load_state(partner.name, e) for e in partner.entities}
    return plan_changes(partner.streams, wanted, state, hashes=desired_hashes(partner.by_name, wanted))


def run(
    partner: Partner, store: StateStore, run_id: str, wanted: dict[str, dict[str, dict[str, Any]]]
) -> Plan:
    """One run as the flows make it: recover, plan, load batch by batch."""
    client = partner.connect(HausflowSettings())

    async def go() -> Plan:
        await recover_pending(store, client, partner, run_id)
        plan = plan_for(partner, store, wanted)
        for batch in plan.batches(7):
            await load_batch(store, client, partner, run_id, batch)
        return plan

    return asyncio.run(go())


@pytest.fixture
def store(tmp_path: Path) -> CrashingStore:
    return CrashingStore(f"sqlite:///{tmp_path}/state.sqlite")


def test_plan_follows_the_streams_write_order(store: StateStore) -> None:
    partner = toy_partner(FakePartnerClient("toy", {"accounts": ACCOUNTS, "bookings": BOOKINGS}))
    plan = plan_for(partner, store, desired(3))
    assert [w.entity for w in plan.writes] == ["accounts"] * 3 + ["bookings"] * 3


def test_a_crash_between_sending_and_confirming_loses_nothing_and_sends_nothing_twice(
    store: CrashingStore,
) -> None:
    fake = FakePartnerClient("toy", {"accounts": ACCOUNTS, "bookings": BOOKINGS})
    partner = toy_partner(fake)
    wanted = desired()
    store.crash_next_confirm = True
    with pytest.raises(Crash):
        run(partner, store, "run-1", wanted)
    # the first batch reached the partner, its confirmation died with the process
    assert sum(fake.writes.values()) == 7 and len(store.load_pending("toy")) == 7
    assert store.load_state("toy", "accounts") == {}

    second = run(partner, store, "run-2", wanted)
    assert len(second.writes) == 60 - 7  # the 7 were read back and confirmed, not planned again
    assert fake.duplicates == 0 and set(fake.writes.values()) == {1}
    assert {e: len(r) for e, r in fake.records.items()} == {"accounts": 30, "bookings": 30}
    assert store.load_pending("toy") == []
    assert len(store.load_state("toy", "accounts")) == 30 and len(store.load_state("toy", "bookings")) == 30

    third = run(partner, store, "run-3", wanted)  # in step: nothing to do
    assert third.writes == [] and sum(third.unchanged.values()) == 60


def test_a_crashed_run_run_again_under_its_own_id_has_the_protocol_of_one_clean_run(
    store: CrashingStore,
) -> None:
    """The Prefect UI's Retry runs the same flow run again: the writes its first attempt sent but
    never saw confirmed are read back, confirmed and written to the run's protocol, once each."""
    fake = FakePartnerClient("toy", {"accounts": ACCOUNTS, "bookings": BOOKINGS})
    partner = toy_partner(fake)
    store.start_run("run-1", "toy-sync", "toy", False)
    store.crash_next_confirm = True
    with pytest.raises(Crash):
        run(partner, store, "run-1", desired())
    store.start_run("run-1", "toy-sync", "toy", False)  # the same flow run, again
    run(partner, store, "run-1", desired())
    assert set(fake.writes.values()) == {1} and fake.duplicates == 0
    assert store.protocol_counts("run-1") == {("accounts", "created"): 30, ("bookings", "created"): 30}


def test_a_crash_before_sending_sends_each_record_once_in_the_next_run(store: CrashingStore) -> None:
    class DiesWhileSending(FakePartnerClient):
        dead = True

        async def awrite_many(self, ops: Any) -> Any:
            if self.dead:
                self.dead = False
                raise Crash
            return await super().awrite_many(ops)

    fake = DiesWhileSending("toy", {"accounts": ACCOUNTS, "bookings": BOOKINGS})
    partner = toy_partner(fake)
    with pytest.raises(Crash):
        run(partner, store, "run-1", desired())
    assert len(store.load_pending("toy")) == 7 and sum(fake.writes.values()) == 0
    run(partner, store, "run-2", desired())
    assert set(fake.writes.values()) == {1} and len(fake.writes) == 60 and fake.duplicates == 0


def test_a_retried_batch_sends_nothing_its_earlier_attempt_sent(store: CrashingStore) -> None:
    fake = FakePartnerClient("toy", {"accounts": ACCOUNTS, "bookings": BOOKINGS})
    partner = toy_partner(fake)
    batch = next(plan_for(partner, store, desired()).batches(7))

    async def attempts() -> Any:
        store.crash_next_confirm = True
        with pytest.raises(Crash):
            await load_batch(store, fake, partner, "run-1", batch)
        return await load_batch(store, fake, partner, "run-1", batch, retried=True)

    outcome = asyncio.run(attempts())
    assert outcome.confirmed == 7 and outcome.verified_by_read == 7
    assert set(fake.writes.values()) == {1} and fake.duplicates == 0
    assert sorted(r.outcome for r in store.protocol_rows("run-1")) == ["created"] * 7


def test_withdrawal_archive_and_refusal_follow_the_streams(store: CrashingStore) -> None:
    fake = FakePartnerClient(
        "toy", {"accounts": ACCOUNTS, "bookings": BOOKINGS}, refuse={("accounts", "A5"): "holder: too long"}
    )
    partner = toy_partner(fake)
    run(partner, store, "run-1", desired(6))
    open_q = store.open_quarantine("toy")
    assert [(q["ref_id"], q["rule"]) for q in open_q] == [("A5", "toy_rejected")]
    assert "holder: too long" in str(open_q[0]["reason"])
    wanted = desired(6)
    del wanted["accounts"]["A1"], wanted["bookings"]["B1"]
    plan = plan_for(partner, store, wanted)
    # the booking cannot be archived and has no withdrawal payload: left as it is; the account is archived
    assert [(w.entity, w.op, w.ref_id) for w in plan.writes] == [
        ("accounts", "upsert", "A5"),
        ("accounts", "archive", "A1"),
    ]


def test_refused_credentials_end_the_batch_with_nothing_quarantined(store: CrashingStore) -> None:
    fake = FakePartnerClient("toy", {"accounts": ACCOUNTS, "bookings": BOOKINGS}, credentials_ok=False)
    partner = toy_partner(fake)
    with pytest.raises(PartnerCredentialsError, match="refused the login"):
        run(partner, store, "run-1", desired(3))
    assert store.open_quarantine("toy") == [] and store.protocol_rows("run-1") == []


def test_load_tasks_retry_only_what_is_retriable() -> None:
    from prefect.states import Failed
    from sqlalchemy.exc import OperationalError

    from tasks.sync.load import load_partner_batch, retry_if_retriable

    def retried(error: BaseException) -> bool:
        return retry_if_retriable(load_partner_batch, None, Failed(data=error))  # type: ignore[arg-type]

    assert retried(PartnerTransportError("GET /x: ReadTimeout, answer lost"))
    assert retried(OperationalError("UPDATE sync_state", {}, Exception("database is locked")))
    assert not retried(PartnerCredentialsError("toy", 401, "invalid key", "toy.api_key"))
    assert not retried(KeyError("entity"))  # a programming error is not sent three times
    assert load_partner_batch.retry_condition_fn is retry_if_retriable


def test_confirmations_of_a_toy_partner_stay_apart_from_the_portals(store: StateStore) -> None:
    store.confirm(
        "portal",
        [Confirmation("accounts", "A1", "upsert", "h", None)],
        "r",
        [ProtocolRow("accounts", "A1", "created")],
    )
    partner = toy_partner(FakePartnerClient("toy", {"accounts": ACCOUNTS, "bookings": BOOKINGS}))
    assert len(plan_for(partner, store, desired(1)).writes) == 2


def test_a_child_of_a_record_refused_in_the_same_run_is_held_back_not_refused_for_good(
    store: CrashingStore,
) -> None:
    """The partner refuses account A2; its booking B2 is not sent after it (the partner would
    refuse it too, and that refusal would hold it after A2 is fixed), nor quarantined: the next
    run sends it once A2 went through."""
    from tasks.sync.plan import without_failed_parents

    fake = FakePartnerClient(
        "toy", {"accounts": ACCOUNTS, "bookings": BOOKINGS}, refuse={("accounts", "A2"): "holder: invalid"}
    )
    partner = toy_partner(fake)
    wanted = desired(4)

    def run_with_deferral(run_id: str) -> list[str]:
        async def go() -> list[str]:
            failed: set[tuple[str, str]] = set()
            held_back: list[str] = []
            for planned in plan_for(partner, store, wanted).batches(100):
                batch, held = without_failed_parents(partner.by_name, planned, failed)
                held_back += [w.ref_id for w, _ in held]
                if batch:
                    outcome = await load_batch(store, fake, partner, run_id, batch)
                    failed |= set(outcome.failed_keys)
            return held_back

        return asyncio.run(go())

    assert run_with_deferral("run-1") == ["B2"]
    assert ("bookings", "B2") not in fake.writes
    assert [q["ref_id"] for q in store.open_quarantine("toy")] == ["A2"]
    fake.refuse.clear()  # A2 fixed
    wanted["accounts"]["A2"]["holder"] = "Mieter 2, berichtigt"
    assert run_with_deferral("run-2") == []
    assert fake.writes[("bookings", "B2")] == 1 and "B2" in fake.records["bookings"]


def test_the_portal_streams_name_the_records_a_payload_refers_to() -> None:
    from connectors.portal.streams import CONTACTS, RESPONSIBILITIES, UNITS

    assert UNITS.parents is not None and list(UNITS.parents({"id": "1-1", "propertyId": "1"})) == [
        ("properties", "1")
    ]
    contact = {
        "id": "P1",
        "contracts": [{"propertyId": "1", "unitId": "1-1"}, {"propertyId": "2", "unitId": None}],
    }
    assert CONTACTS.parents is not None
    assert list(CONTACTS.parents(contact)) == [("properties", "1"), ("units", "1-1"), ("properties", "2")]
    caretakers = {"id": "1", "responsibilities": [{"contactId": "P9", "roleName": "Hausmeister"}]}
    assert RESPONSIBILITIES.parents is not None
    assert list(RESPONSIBILITIES.parents(caretakers)) == [("properties", "1"), ("contacts", "P9")]
