"""Credential-expiry warnings: the threshold rule as a table, then the daily flow with fixed business
dates against a real local SMTP server (what arrived is read back) and the portal sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.licence import write_licence
from connectors.portal.auth import TokenCache
from tasks.credential_expiry import Expiry, due_warnings
from tests.test_mail import Mailbox, start

END = date(2027, 1, 31)
SECRET = Expiry("portal-secret", "the portal API secret", END, "renew it")
TOKEN = Expiry("portal-token", "the portal's token", END, "renew the key", renews_itself=True)
ADMINS = ["it@hv-mueller.de", "vertretung@hv-mueller.de"]


@pytest.mark.parametrize(
    ("today", "sent", "due", "clear"),
    [
        (date(2026, 12, 31), {}, [], []),  # 31 days: not yet
        (date(2027, 1, 1), {}, [30], []),  # 30 days
        (date(2027, 1, 2), {"portal-secret:30": "2027-01-31"}, [], []),  # 29 days: already warned at 30
        (date(2027, 1, 2), {}, [30], []),  # a missed first run catches up with the threshold due
        (date(2027, 1, 24), {"portal-secret:30": "2027-01-31"}, [7], []),  # 7 days
        (date(2027, 1, 26), {}, [7], []),  # 5 days, nothing sent yet: only the 7-day warning, no burst
        (date(2027, 1, 30), {"portal-secret:7": "2027-01-31"}, [1], []),  # 1 day
        (date(2027, 1, 31), {"portal-secret:1": "2027-01-31"}, [0], []),  # the day itself: expired
        (date(2027, 2, 10), {"portal-secret:0": "2027-01-31"}, [], []),  # expired, said once
        (date(2027, 1, 24), {"portal-secret:7": "2026-06-30"}, [7], []),  # sent for an earlier end: again
        (
            date(2026, 11, 1),
            {"portal-secret:30": "2027-01-31", "portal-secret:7": "2027-01-31"},
            [],
            ["portal-secret:30", "portal-secret:7"],
        ),  # out of range again (renewed): the marks go
    ],
)
def test_the_threshold_rule(today: date, sent: dict[str, str], due: list[int], clear: list[str]) -> None:
    warnings, cleared = due_warnings([SECRET], today, sent)
    assert [w.threshold for w in warnings] == due
    assert cleared == clear


def test_a_token_that_renews_itself_is_warned_once_per_threshold_whatever_its_new_end() -> None:
    first, _ = due_warnings([TOKEN], date(2027, 1, 26), {})
    assert [w.threshold for w in first] == [7]
    moved = Expiry(TOKEN.key, TOKEN.what, END + timedelta(days=1), TOKEN.renew, renews_itself=True)
    again, _ = due_warnings([moved], date(2027, 1, 27), {"portal-token:7": first[0].expiry.mark})
    assert again == []


# ---- the flow --------------------------------------------------------------------------------------
@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    controller, port = start(box)
    yield box, port
    controller.stop()


@pytest.fixture
def expiry_env(
    mailbox: tuple[Mailbox, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    env = {
        "HAUSFLOW_PROFILE": "test",
        "HAUSFLOW_STATE_URL": f"sqlite:///{tmp_path}/state.sqlite",
        "HAUSFLOW_MAIL__HOST": "127.0.0.1",
        "HAUSFLOW_MAIL__PORT": str(mailbox[1]),
        "HAUSFLOW_MAIL__SENDER": "hausflow@hv-mueller.de",
        "HAUSFLOW_ALERTS__RECIPIENTS": '["it@hv-mueller.de", "vertretung@hv-mueller.de"]',
        "HAUSFLOW_PORTAL__API_SECRET_EXPIRES": END.isoformat(),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def run_on(day: date, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from flows.credential_expiry import credential_expiry

    monkeypatch.setenv("HAUSFLOW_BUSINESS_DATE", day.isoformat())
    result: dict[str, Any] = credential_expiry(profile="test")
    return result


def subjects(box: Mailbox) -> list[tuple[str, str]]:
    return [(str(m["To"]), str(m["Subject"]).strip()) for m in box.messages]


@pytest.mark.usefixtures("prefect_harness")
def test_warnings_go_out_at_30_7_and_1_days_each_once(
    expiry_env: dict[str, Any], mailbox: tuple[Mailbox, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    box = mailbox[0]
    assert run_on(date(2026, 12, 31), monkeypatch)["sent"] == []
    assert run_on(date(2027, 1, 1), monkeypatch)["sent"] == ["portal-secret:30"]
    assert subjects(box) == [
        (to, "hausflow (test): the portal API secret expires in 30 days, on 31.01.2027") for to in ADMINS
    ]
    assert "set portal.api_secret" in box.messages[0].get_content()
    for _ in range(2):  # 29 days, twice: nothing
        assert run_on(date(2027, 1, 2), monkeypatch) | {"checked": None} == {
            "business_date": "2027-01-02",
            "checked": None,
            "due": [],
            "sent": [],
            "refused": {},
        }
    assert len(box.messages) == 2
    assert run_on(date(2027, 1, 24), monkeypatch)["sent"] == ["portal-secret:7"]
    assert run_on(date(2027, 1, 25), monkeypatch)["sent"] == []
    assert run_on(date(2027, 1, 30), monkeypatch)["sent"] == ["portal-secret:1"]
    assert run_on(date(2027, 1, 30), monkeypatch)["sent"] == []
    assert run_on(date(2027, 1, 31), monkeypatch)["sent"] == ["portal-secret:0"]
    assert [s for to, s in subjects(box) if to == ADMINS[0]] == [
        "hausflow (test): the portal API secret expires in 30 days, on 31.01.2027",
        "hausflow (test): the portal API secret expires in 7 days, on 31.01.2027",
        "hausflow (test): the portal API secret expires in 1 day, on 31.01.2027",
        "hausflow (test): the portal API secret expires today (31.01.2027)",
    ]
    assert len(box.messages) == 8 and {m["Message-ID"] for m in box.messages}.__len__() == 8
    # renewed: a new end date out of range clears the marks; its own series starts at 30 days again
    monkeypatch.setenv("HAUSFLOW_PORTAL__API_SECRET_EXPIRES", "2028-01-31")
    assert run_on(date(2027, 2, 1), monkeypatch)["sent"] == []
    assert run_on(date(2028, 1, 1), monkeypatch)["sent"] == ["portal-secret:30"]


@pytest.mark.usefixtures("prefect_harness")
def test_every_kind_of_credential_is_checked(
    expiry_env: dict[str, Any], mailbox: tuple[Mailbox, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    licence = write_licence(
        tmp_path / "licence.toml",
        {
            "number": "HF-1",
            "customer": "HV",
            "valid_until": date(2027, 1, 7),
            "users": 5,
            "modules": ["portal"],
        },
    )
    monkeypatch.setenv("HAUSFLOW_LICENCES__FILE", str(licence))
    monkeypatch.setenv("HAUSFLOW_DEPOSIT__PASSWORD_EXPIRES", "2027-02-01")
    monkeypatch.setenv("HAUSFLOW_MAIL__OAUTH2_CLIENT_SECRET_EXPIRES", "2026-12-31")
    result = run_on(date(2027, 1, 1), monkeypatch)
    # the OAuth2 secret's date counts only where the mail login is OAuth2 (here: none)
    assert result["checked"] == {
        "portal-secret": "2027-01-31",
        "deposit-password": "2027-02-01",
        "licence": "2027-01-07",
    }
    assert sorted(result["sent"]) == ["licence:7", "portal-secret:30"]  # the password: 31 days, not yet
    text = "\n".join(m.get_content() for m in mailbox[0].messages)
    assert "The hausflow licence HF-1 expires in 6 days" in text and "renewed licence file" in text


@pytest.mark.usefixtures("prefect_harness")
def test_the_oauth2_client_secret_and_no_recipients(
    expiry_env: dict[str, Any], mailbox: tuple[Mailbox, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.credential_expiry import credential_expiry

    monkeypatch.setenv("HAUSFLOW_MAIL__OAUTH2_CLIENT_SECRET_EXPIRES", "2027-01-02")
    monkeypatch.setenv("HAUSFLOW_MAIL__AUTH", "oauth2")
    monkeypatch.setenv("HAUSFLOW_ALERTS__RECIPIENTS", "[]")
    monkeypatch.setenv("HAUSFLOW_BUSINESS_DATE", "2027-01-01")
    state = credential_expiry(profile="test", return_state=True)  # type: ignore[call-arg]
    assert state.is_failed()
    with pytest.raises(
        ValueError, match=r"2 credential-expiry warnings are due but alerts\.recipients is empty"
    ):
        state.result()
    assert not mailbox[0].messages


@pytest.mark.usefixtures("prefect_harness")
def test_the_portal_token_is_read_by_logging_in(
    expiry_env: dict[str, Any], mailbox: tuple[Mailbox, int], monkeypatch: pytest.MonkeyPatch, sandbox: Any
) -> None:
    from flows.credential_expiry import credential_expiry

    monkeypatch.delenv("HAUSFLOW_PORTAL__API_SECRET_EXPIRES")
    for key, value in {
        "ENABLED": "true", "BASE_URL": sandbox.base_url, "API_KEY": sandbox.key, "API_SECRET": sandbox.secret,
    }.items():  # fmt: skip
        monkeypatch.setenv(f"HAUSFLOW_PORTAL__{key}", value)
    TokenCache.clear()
    logins = sandbox.counters()["logins"]
    assert run_on(date(2027, 1, 1), monkeypatch)["checked"] == {}  # a month-long token: nothing to say
    sandbox.set_token_ttl(5 * 86400 + 600)  # the portal now ends tokens in 5 days: the key ends then
    try:
        assert run_on(date(2027, 1, 1), monkeypatch)["sent"] == ["portal-token:7"]
        assert run_on(date(2027, 1, 2), monkeypatch)["sent"] == []  # its end moved with the login: still once
        assert sandbox.counters()["logins"] == logins + 3
        assert "the portal's access token" in str(mailbox[0].messages[0]["Subject"])
        monkeypatch.setenv("HAUSFLOW_PORTAL__API_SECRET", "wrong")
        monkeypatch.setenv("HAUSFLOW_PORTAL__API_SECRET_EXPIRES", "2027-01-10")
        state = credential_expiry(profile="test", return_state=True)  # type: ignore[call-arg]
    finally:
        sandbox.set_token_ttl(30 * 86400)
    assert state.is_failed()
    with pytest.raises(RuntimeError, match="refused the login \\(HTTP 401\\)"):
        state.result()
    assert "the portal API secret expires in 8 days" in str(
        mailbox[0].messages[-1]["Subject"]
    )  # the rest went out
