"""Typed settings for hausflow, one profile per system (production, test, demo).

The seeds keep separate configurations for the production and the test system and switch the
interfaces off in the test system by default. A profile is a TOML file in ``config/profiles/``;
every value can be overridden by an environment variable with the prefix ``HAUSFLOW_`` and ``__``
as the nesting separator (``HAUSFLOW_PORTAL__BASE_URL``), and for one system alone with the
system's prefix (``HAUSFLOW_PRODUCTION__PORTAL__API_SECRET``), which wins. Secrets are
``SecretStr`` and never appear in ``repr`` or logs.

The systems never mix: :func:`load_settings` refuses settings that share a database, an output
folder or a credential with another system (:class:`SystemMixError`; docs/operations.md,
*Production and test systems*).
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from datetime import date
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
ProfileName = Literal["production", "test", "demo"]
SYSTEMS: tuple[str, ...] = get_args(ProfileName)
# The profile whose TOML the settings being built in this thread (or asyncio task) read, and
# whether the process-wide HAUSFLOW_... variables count; set by load_settings for the one call,
# so flows of two profiles in one worker never see each other's.
_LOADING: ContextVar[tuple[str, bool] | None] = ContextVar("hausflow_loading_profile", default=None)


class PortalSettings(BaseModel):
    """Tenant-portal (casavi v2) interface settings: server parameters and data configuration."""

    enabled: bool = False
    base_url: str = "https://api.mycasavi.com"
    api_key: SecretStr = SecretStr("")
    api_secret: SecretStr = SecretStr("")
    api_secret_expires: date | None = Field(
        default=None,
        description="end of the API secret's validity, as the portal provider states it (warned)",
    )
    token_life_days: int = Field(
        default=30,
        ge=1,
        description="how long a fresh portal token normally lives; a fresh token that lives shorter is warned "
        "about (the portal then ends it with the key's validity)",
    )
    timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    max_retries: int = 6
    backoff_base_s: float = 0.2
    backoff_max_s: float = 20.0
    rate_limit_per_s: float | None = None
    shared_rate_limit: str | None = Field(
        default=None,
        description="name of the Prefect global concurrency limit that every worker's requests to this "
        "partner take a slot of (several workers: ./hausflow cluster up creates it from rate_limit_per_s)",
    )
    concurrency: int = 16
    batch_size: int = 2000
    incremental: bool = Field(
        default=True,
        description="rebuild only what changed since the last complete run (see tasks/portal_memo.py)",
    )
    # data configuration (seed 001: Objektbereich, Personentyp, Mieterportalaccount ... Tage)
    object_range: list[str] = Field(default_factory=list, description="released object numbers; empty = none")
    object_group: str | None = Field(default=None, description="alternatively: every object of this group")
    person_types: list[str] = Field(default_factory=lambda: ["MIETER", "EIGENTUEMER", "MITBEWOHNER"])
    access_days_before_start: int = 14
    archive_days_after_move_out: int = 30
    # documents, messages and notes (seed 001; docs/portal-exchange.md)
    document_types: list[str] = Field(
        default_factory=list, description="released document types, sent when dated since the time filter"
    )
    document_types_without_time_filter: list[str] = Field(
        default_factory=list, description="released document types sent whatever their age (tenancy contract)"
    )
    document_years_back: int = Field(
        default=1, ge=0, description="documents dated since 1 January of the year this many years back"
    )
    max_document_mb: float = Field(
        default=100.0, gt=0, description="larger documents are skipped with the reason"
    )
    document_dir: str = Field(
        default="",
        description="folder of relative document paths; empty: beside a SQLite ERP, else var/documents",
    )
    converter: str = Field(
        default="soffice", description="LibreOffice's program, converts Word and OpenDocument files"
    )
    message_years_back: int = Field(
        default=1, ge=0, description="open messages created since 1 January of the year this many years back"
    )
    full_history_objects: list[str] = Field(
        default_factory=list, description="objects whose messages go over whatever their age"
    )
    teams: list[int] = Field(default_factory=list, description="enabled teams; empty: every team")
    erp_user: str = Field(
        default="999", pattern=r"^[0-9]{3}$", description="three-digit ERP user of messages from the portal"
    )
    order_note_template: str = Field(
        default="Ihre Meldung [MELDUNGSNUMMER] wurde am [AUFTRAGSDATUM] an [KREDITOR] beauftragt.",
        description="public note created when an order is placed; placeholders [KREDITOR], [AUFTRAGSDATUM], "
        "[MELDUNGSNUMMER]",
    )
    notify_unregistered_by_email: bool = Field(
        default=True, description="contacts not registered in the portal get messages and notes by e-mail"
    )


class DepositSettings(BaseModel):
    """Rent-deposit partner (Deutsche Kautionspartner, KM deposit interface; seed 000).

    Server address, client user name and web-service password as the partner hands them out;
    the objects of ``object_group`` go over; two daily jobs, master data first, then bookings.
    """

    enabled: bool = False
    base_url: str = Field(
        default="https://api.kautionspartner.de/ws",
        description="the partner's server address (Server-Adresse)",
    )
    client_username: str = Field(default="", description="client user name from the partner")
    password: SecretStr = Field(default=SecretStr(""), description="web-service password from the partner")
    password_expires: date | None = Field(
        default=None,
        description="end of the web-service password's validity, as the partner states it (warned)",
    )
    timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    max_retries: int = 6
    backoff_base_s: float = 0.2
    backoff_max_s: float = 20.0
    rate_limit_per_s: float | None = None
    shared_rate_limit: str | None = Field(
        default=None,
        description="name of the Prefect global concurrency limit that every worker's requests to this "
        "partner take a slot of (several workers: ./hausflow cluster up creates it from rate_limit_per_s)",
    )
    concurrency: int = 16
    batch_size: int = 2000
    object_group: str = Field(default="KM_Kautionen", description="the objects of this group go over")
    daily_schedules: bool = Field(
        default=True,
        description="the two daily runs are scheduled by hausflow; false where an outside scheduler "
        "(a Windows task, cron) triggers the flows instead: scheduled runs then end at once",
    )
    master_data_cron: str = Field(default="0 5 * * *", description="daily master-data run (Europe/Berlin)")
    bookings_cron: str = Field(default="30 5 * * *", description="daily bookings run, after the master data")
    retention_account: Literal["owner", "per_transfer"] = Field(
        default="owner",
        description="where a kept deposit (counterclaims) is paid: the owner's account (0 - Eigentümer) or "
        "the manager's retention account (1 - Per Überweisung)",
    )
    manager_retention_name: str = Field(default="", description="holder of the manager's retention account")
    manager_retention_iban: str = Field(default="", description="IBAN of the manager's retention account")
    manager_retention_bic: str | None = Field(
        default=None, description="BIC of the manager's retention account"
    )


class MailSettings(BaseModel):
    """The SMTP server hausflow sends e-mail through (messages to contacts, alerts, expiry warnings).

    ``auth`` says how hausflow logs in (seed 002, *Mail-Server Autorisierungstyp*): ``none``;
    ``basic`` (``AUTH PLAIN``/``LOGIN`` with ``username`` and ``password``); or ``oauth2``
    (client credentials: a token from ``oauth2_token_url`` of the tenant, then ``AUTH XOAUTH2``
    as ``username``). Left out, it is ``basic`` when a username is given, else ``none``.
    """

    host: str = "127.0.0.1"
    port: int = 25
    security: Literal["none", "starttls", "tls"] = "none"
    auth: Literal["none", "basic", "oauth2"] = "none"
    username: str = Field(default="", description="login (basic) or mailbox (oauth2) on the mail server")
    password: SecretStr = SecretStr("")
    sender: str = "hausflow@localhost"
    timeout_s: float = 30.0
    # OAuth2 client credentials (an app registration of the tenant; docs/operations.md)
    oauth2_tenant: str = Field(default="", description="directory (tenant) id of the app registration")
    oauth2_client_id: str = Field(default="", description="application (client) id")
    oauth2_client_secret: SecretStr = Field(default=SecretStr(""), description="the client secret's value")
    oauth2_client_secret_expires: date | None = Field(
        default=None, description="the client secret's valid-until date (warned 30, 7 and 1 days before)"
    )
    oauth2_scope: str = "https://outlook.office365.com/.default"
    oauth2_token_url: str = Field(
        default="https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        description="the token endpoint; {tenant} is replaced by oauth2_tenant",
    )

    @model_validator(mode="after")
    def _basic_when_a_username_is_given(self) -> MailSettings:
        """A username without an explicit ``auth`` keeps meaning a basic login (as before ``auth``)."""
        if "auth" not in self.model_fields_set and self.username:
            self.auth = "basic"
        return self

    def token_url(self) -> str:
        """The token endpoint with the tenant filled in."""
        return self.oauth2_token_url.replace("{tenant}", self.oauth2_tenant)


class AlertSettings(BaseModel):
    """Failure alerts by e-mail (docs/operations.md, *Failure alerts*; seed 002).

    Prefect automations watch every flow run (Failed or Crashed) and each deployment's runs ("not
    started", "blocked") and call hausflow's alert relay (``python -m flows.alert_relay``), which
    mails the recipients through ``[mail]``. Thresholds are per deployment, keyed
    ``flow/deployment`` as ``./hausflow status`` lists them, with ``default`` for the rest; 0 switches
    that alert off for a deployment. Prefect evaluates them no finer than 10 s.
    """

    recipients: list[str] = Field(
        default_factory=list,
        max_length=2,
        description="the (two) addresses failure alerts and expiry warnings go to (Scheduler E-Mailempfänger)",
    )
    not_started_after_s: dict[str, int] = Field(
        default_factory=lambda: {"default": 900, "portal-sync/every-5-minutes": 600},
        description="a run that is late (Prefect: 15 s past its time) and has not started running this "
        "long after is reported 'not started'; per flow/deployment, 'default' for the others",
    )
    blocked_after_s: dict[str, int] = Field(
        default_factory=lambda: {"default": 3600, "portal-sync/every-5-minutes": 1800},
        description="a run still running this long after it started is reported 'blocked'; per "
        "flow/deployment, 'default' for the others",
    )
    relay_host: str = Field(default="127.0.0.1", description="where the alert relay listens")
    relay_port: int = Field(default=8790, description="the alert relay's port")
    relay_token: SecretStr = Field(
        default=SecretStr(""),
        description="a shared secret the Prefect webhook sends and the relay requires (empty: none, loopback only)",
    )

    @field_validator("recipients")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        """Each recipient is one plain e-mail address (``name@domain``)."""
        cleaned = [v.strip() for v in value]
        for address in cleaned:
            local, at, domain = address.partition("@")
            if not (local and at and "." in domain) or any(c.isspace() or c in "<>,;" for c in address):
                raise ValueError(f"alerts.recipients: {address!r} is not one e-mail address (name@domain)")
        return cleaned

    def thresholds(self, deployment: str) -> tuple[int, int]:
        """``(not_started_after_s, blocked_after_s)`` of ``flow/deployment`` (0: that alert off)."""
        return (
            self.not_started_after_s.get(deployment, self.not_started_after_s.get("default", 0)),
            self.blocked_after_s.get(deployment, self.blocked_after_s.get("default", 0)),
        )

    @field_validator("not_started_after_s", "blocked_after_s")
    @classmethod
    def _at_least_ten_seconds(cls, value: dict[str, int]) -> dict[str, int]:
        """Prefect's proactive triggers take a window of 10 s or more."""
        for key, seconds in value.items():
            if seconds != 0 and seconds < 10:
                raise ValueError(f"{key} = {seconds}: a threshold is 0 (off) or at least 10 seconds")
        return value


class Licences(BaseModel):
    """Licensed modules (seed 002, *Lizenzverwaltung*).

    With ``file`` set, the licence file decides (``connectors/licence.py``, ``docs/operations.md``):
    its modules, number of users and end date; where ``public_key`` or ``public_key_file`` names
    the vendor's Ed25519 key, its signature must match. Without a file (development, the test
    system) the booleans below are the licence. Owners and caretakers reach the portal only with
    their module.
    """

    file: str = Field(default="", description="the licence file (TOML); relative paths from the checkout")
    public_key: str = Field(default="", description="the vendor's Ed25519 public key (base64 or PEM)")
    public_key_file: str = Field(default="", description="alternatively: a file holding that key")
    # without a licence file: the modules licensed
    portal: bool = Field(default=True, description="the tenant portal (master data)")
    owner: bool = False
    caretaker: bool = False
    documents_messages: bool = Field(
        default=False, description="documents, messages and notes with the portal (docs/portal-exchange.md)"
    )
    deposit: bool = Field(default=False, description="the rent-deposit partner (KM deposit interface)")
    sepa: bool = Field(default=True, description="SEPA direct debits, payouts and bank statements")


class PayoutSettings(BaseModel):
    """Credit transfers of payouts (retained deposits, seed 000); the initiating party is ``creditor_name``."""

    output_dir: str = Field(
        default="var/sepa/payouts", description="pain.001 files and their control listings (owner-only)"
    )
    batch_booking: bool = Field(
        default=False, description="one booking per payment block (True) or per payout (False)"
    )
    lead_days: int = Field(
        default=0, description="TARGET2 business days from the next business day to the execution date"
    )
    listing_preview_rows: int = Field(default=200, description="payouts of the control listing in the UI")


class SepaSettings(BaseModel):
    """Creditor side of the SEPA direct-debit run (seeds 003 and 004), and the payouts' settings."""

    creditor_name: str = "Hausverwaltung Muster GmbH"
    creditor_iban: str = "DE02120300000000202051"
    creditor_bic: str = "BYLADEM1001"
    creditor_id: str = "DE98ZZZ09999999999"
    end_to_end_template: str = "[OBJEKTNUMMER]-[MIETERNUMMER]"
    batch_booking: bool = True
    max_transactions_per_file: int = 500_000
    output_dir: str = "var/sepa"
    mandate_lapse_months: int = 36
    lead_days: int = Field(
        default=1, description="TARGET2 business days between hand-in and collection (CORE: 1)"
    )
    max_days_ahead: int = Field(
        default=14, description="banks accept collection dates at most this far ahead"
    )
    collection_horizon_days: int = Field(
        default=0,
        description="also collect claims due up to this many days after the run's date, on their due date",
    )
    listing_preview_rows: int = Field(default=200, description="rows of the control listing shown in the UI")
    payouts: PayoutSettings = Field(default_factory=PayoutSettings)
    enabled: bool = Field(
        default=True,
        description="the bank interface: direct-debit and payout files, bank-statement imports; off: those "
        "runs write nothing and say so (off on the test system)",
    )


class HausflowSettings(BaseSettings):
    """All settings of one system (profile)."""

    model_config = SettingsConfigDict(env_prefix="HAUSFLOW_", env_nested_delimiter="__", extra="ignore")

    profile: ProfileName = "test"
    erp_url: str = "sqlite:///var/erp.sqlite"
    state_url: str = "sqlite:///var/state.sqlite"
    business_date: date | None = Field(default=None, description="fixes 'today' (tests, replays)")
    cache_dir: str = Field(
        default="",
        description="folder of the sync memos; empty: next to a SQLite state database, else var/cache",
    )
    portal: PortalSettings = Field(default_factory=PortalSettings)
    licences: Licences = Field(default_factory=Licences)
    mail: MailSettings = Field(default_factory=MailSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    deposit: DepositSettings = Field(default_factory=DepositSettings)
    sepa: SepaSettings = Field(default_factory=SepaSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Sources by precedence: init values, the system's environment (``HAUSFLOW_TEST__...``), the
        process environment (``HAUSFLOW_...``), the profile's TOML, secrets.

        The profile is the one :func:`load_settings` is loading in this thread or task, else
        ``HAUSFLOW_PROFILE``, else ``test``.
        """
        profile, process_env = _LOADING.get() or (os.environ.get("HAUSFLOW_PROFILE", "test"), True)
        toml = TomlConfigSettingsSource(settings_cls, toml_file=PROFILE_DIR / f"{profile}.toml")
        system_env = EnvSettingsSource(
            settings_cls, env_prefix=system_env_prefix(profile), env_nested_delimiter="__"
        )
        if not process_env:
            return (init_settings, system_env, toml, file_secret_settings)
        return (init_settings, system_env, env_settings, toml, file_secret_settings)


class SystemMixError(RuntimeError):
    """Two systems (profiles) would share a database, an output folder or a credential.

    Raised when settings are loaded (the run fails at its start, before anything is read or sent)
    and by the state store and output folders, which remember the system they belong to.
    """


def system_env_prefix(profile: str) -> str:
    """The environment prefix of one system alone: ``HAUSFLOW_PRODUCTION__``."""
    return f"HAUSFLOW_{profile.upper()}__"


def home_system() -> str:
    """The system this process is set up for: ``HAUSFLOW_PROFILE``, else ``test``.

    The process-wide ``HAUSFLOW_...`` variables are this system's: another system loaded in the
    same process that takes a separated setting from them is refused (see :func:`load_settings`).
    """
    return os.environ.get("HAUSFLOW_PROFILE") or "test"


def load_settings(profile: str | None = None, **overrides: Any) -> HausflowSettings:
    """Load the settings of ``profile`` (default: ``HAUSFLOW_PROFILE`` or ``test``).

    Args:
        profile: ``production``, ``test`` or ``demo``; selects ``config/profiles/<profile>.toml``.
        overrides: values that win over environment and file (used by flows and tests).

    The profile reaches the settings sources through a context variable, never through
    ``os.environ``: flows of two profiles may load their settings at once in one worker.

    The settings are then compared with each other system's, built the same way from its TOML
    and its own ``HAUSFLOW_<SYSTEM>__...`` variables (and the process-wide ``HAUSFLOW_...`` ones
    where it is :func:`home_system`). Production is compared with test and demo; test and demo,
    which both work against sandboxes, are not compared with each other.

    Raises:
        FileNotFoundError: the profile has no TOML file.
        SystemMixError: the settings share a database (state store, ERP), an output folder or a
            credential of an interface on in both with another system; the message names both
            systems and the settings, never a secret.
    """
    name = profile or os.environ.get("HAUSFLOW_PROFILE", "test")
    path = PROFILE_DIR / f"{name}.toml"
    if not path.exists():
        raise FileNotFoundError(f"unknown profile {name!r}: {path.name} is missing in config/profiles")
    settings = _build(name, process_env=True, **overrides)
    home = home_system()
    for other in SYSTEMS:
        if other == name or {name, other} == {"test", "demo"} or not (PROFILE_DIR / f"{other}.toml").exists():
            continue
        try:
            theirs = _build(other, process_env=other == home)
        except ValidationError:
            continue  # the other system's own runs fail on its settings; they cannot mix with these
        shared = shared_places(settings, theirs)
        if shared:
            raise SystemMixError(_mix_message(name, other, home, shared))
    return settings


def _build(profile: str, process_env: bool, **overrides: Any) -> HausflowSettings:
    token = _LOADING.set((profile, process_env))
    try:
        return HausflowSettings(profile=profile, **overrides)  # type: ignore[arg-type]
    finally:
        _LOADING.reset(token)


# ---- what the systems must not share ------------------------------------------------------------
DATABASES = ("state_url", "erp_url")
FOLDERS = ("sepa.output_dir", "sepa.payouts.output_dir", "cache_dir")
# credential -> the switch of its interface (None: in use whenever it is set)
CREDENTIALS: dict[str, str | None] = {
    "portal.api_key": "portal.enabled",
    "portal.api_secret": "portal.enabled",
    "deposit.password": "deposit.enabled",
    "mail.password": None,
    "mail.oauth2_client_secret": None,
}


def _value(settings: HausflowSettings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def database_identity(url: str) -> str | None:
    """Which database a URL names, whatever the driver, user or password (``None``: in memory).

    ``postgresql+psycopg://a@localhost/erp`` and ``postgresql://b@127.0.0.1:5432/erp`` are one.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        file = parsed.database or ""
        return None if file in ("", ":memory:") else f"sqlite:{Path(file).expanduser().resolve()}"
    host = (parsed.host or "localhost").lower()
    host = "localhost" if host in ("127.0.0.1", "::1") else host
    port = parsed.port or {"postgresql": 5432, "oracle": 1521, "mysql": 3306, "mssql": 1433}.get(backend)
    return f"{backend}://{host}:{port}/{parsed.database or ''}"


def shown_url(url: str) -> str:
    """A database URL for a message: without its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unreadable URL)"


def shared_places(mine: HausflowSettings, theirs: HausflowSettings) -> list[tuple[str, str]]:
    """What ``mine`` shares with ``theirs``: ``(my setting, how)`` per item, secrets never shown.

    Databases and folders are compared across settings (a state store in the other's ERP counts;
    so does an output folder inside the other's); a credential only with the same credential, and
    only where its interface is on in both.
    """
    found: list[tuple[str, str]] = []
    for my_key in DATABASES:
        ident = database_identity(_value(mine, my_key))
        for their_key in DATABASES:
            if ident is not None and ident == database_identity(_value(theirs, their_key)):
                found.append((my_key, f"{my_key} {shown_url(_value(mine, my_key))} is its {their_key}"))
    for my_key in FOLDERS:
        if not (my_folder := _value(mine, my_key)):
            continue
        a = Path(my_folder).expanduser().resolve()
        overlaps: list[str] = []
        for their_key in FOLDERS:
            if not (their_folder := _value(theirs, their_key)):
                continue
            b = Path(their_folder).expanduser().resolve()
            if a == b:
                overlaps.insert(0, f"{my_key} {my_folder} is its {their_key}")
            elif a.is_relative_to(b):
                overlaps.append(f"{my_key} {my_folder} lies inside its {their_key} {their_folder}")
            elif b.is_relative_to(a):
                overlaps.append(f"{my_key} {my_folder} holds its {their_key} {their_folder}")
        if overlaps:
            found.append((my_key, overlaps[0]))
    for key, switch in CREDENTIALS.items():
        on = switch is None or (_value(mine, switch) and _value(theirs, switch))
        secret = _value(mine, key)
        if on and secret and secret == _value(theirs, key):
            found.append((key, f"{key} is its {key} (the same value)"))
    return found


def _mix_message(name: str, other: str, home: str, shared: list[tuple[str, str]]) -> str:
    """One line: both systems, each shared setting, and where to give this system its own."""
    prefix = system_env_prefix(name)
    process_wide = [
        env
        for env in dict.fromkeys("HAUSFLOW_" + key.upper().replace(".", "__") for key, _ in shared)
        if env in os.environ and prefix + env.removeprefix("HAUSFLOW_") not in os.environ
    ]
    setup = f"HAUSFLOW_PROFILE={home}" if os.environ.get("HAUSFLOW_PROFILE") else "HAUSFLOW_PROFILE unset"
    why = (
        f" {' and '.join(process_wide)} {'is' if len(process_wide) == 1 else 'are'} set for the whole process, "
        f"which is set up for the {home} system ({setup}), and so {'reaches' if len(process_wide) == 1 else 'reach'} "
        "every system run in it."
        if process_wide and name != home
        else ""
    )
    return (
        f"The {name} system's settings share with the {other} system: {'; '.join(how for _, how in shared)}. "
        f"A run of one system never uses the other's state store, ERP, output folders or credentials, so "
        f"hausflow refuses these settings.{why} Give the {name} system its own in config/profiles/{name}.toml "
        f"or as {prefix}<SETTING> (e.g. {prefix}{shared[0][0].upper().replace('.', '__')})."
    )
