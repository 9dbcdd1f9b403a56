"""Deterministic German demo data for the reference ERP schema (iX-Haus / DOMUS 1000 / OrgaMon).

Why: every flow of hausflow (tenant portal, deposit partner, SEPA) needs an ERP to read from, and the
tests and benchmarks need one whose contents are known in advance. ``generate_erp`` fills every table
of :mod:`connectors.erp.schema` from a seed and a size knob (``persons``); the same seed, size and
business date give identical rows, byte for byte. Nothing depends on the clock: all dates derive from
``business_date`` and timestamps are UTC datetimes derived from it.

Besides ordinary data the generator plants the edge cases the portal and SEPA rules name (tenants
without a name, malformed e-mails, anonymised persons, move-outs inside and beyond the grace period,
lapsed and revoked mandates, ...) and returns their numbers in ``DemoSummary.edge_cases`` so tests
can assert on them. ``mutate_erp`` and the small edit helpers change an existing database the way a
clerk in the ERP would.

Speed: Faker is only used to fill small name pools once; rows are then drawn from the pools with one
seeded ``random.Random`` and inserted with executemany in chunks, one transaction per table
(100,000 persons: about 18 s on SQLite, about 45 s on a local PostgreSQL, before the documents'
files: about 105,000 of them add 5-19 s on the 2-CPU test machine, bound by the file system's file
creation, not by Python; see :func:`write_document_files`).

Documents are real files: copies of the committed samples in ``connectors/erp/demo_files``
(PDF, Word, OpenDocument) under :func:`connectors.erp.extract.document_root` (beside a SQLite ERP
file), at each row's relative ``content_path``.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from faker import Faker
from schwifty import IBAN
from sqlalchemy import Connection, Engine, Table, bindparam, delete, func, insert, select, update

from config.settings import PortalSettings
from connectors.erp import schema as s
from connectors.erp.extract import DOCUMENTS_SUBDIR, document_root
from connectors.erp.schema import metadata

DEFAULT_BUSINESS_DATE = date(2025, 6, 16)
DEPOSIT_GROUP = "KM_Kautionen"
DEPOSIT_EDGE_OBJECTS = ("9001", "9002", "9003")
"""Small objects of the deposit group whose records fail the deposit preconditions (no owner, no
trust pooled account, a tenant with two deposit accounts); outside the portal group."""
MIN_PERSONS = 100  # smallest size at which every edge-case list is non-empty (checked for many seeds)
INSERT_CHUNK_ROWS = 10_000
OVERSIZED_DOCUMENT_BYTES = 157_286_400  # 150 MB: above the portal's 100 MB limit
DEMO_FILES = Path(__file__).with_name("demo_files")  # the committed samples, one per file type
# The sample file of each type, read once: every demo document is a copy of its type's sample (a PDF
# carries its document number in place of the sample's ``0000000`` in its text and title, same
# length, so each PDF has its own bytes and SHA-256 and its cross-reference table stays valid).
SAMPLE_FILES: dict[str, bytes] = {
    ext: (DEMO_FILES / f"sample.{ext}").read_bytes() for ext in ("pdf", "docx", "odt")
}
_PDF_NUMBERED = (b"Dokument-Nr. ", b"Demo-Dokument ")  # followed by the placeholder 0000000
MESSAGES_PER_UNIT = 0.62  # 100,000 persons: about 50,000 messages
ANONYMISED_PLACEHOLDER = "Anonymisiert"
_PORTAL_DEFAULTS = PortalSettings()
DEFAULT_ACCESS_DAYS = _PORTAL_DEFAULTS.access_days_before_start
DEFAULT_ARCHIVE_DAYS = _PORTAL_DEFAULTS.archive_days_after_move_out

EDGE_CASE_KEYS: tuple[str, ...] = (
    "no_last_name",
    "invalid_email",
    "not_enabled_type",
    "anonymised",
    "two_contracts",
    "future_start_within_access",
    "future_start_beyond_access",
    "moved_out_within_grace",
    "moved_out_beyond_grace",
    "co_residents",
    "unreleased_object_tenants",
    "owners",
    "caretakers",
    "company_tenant",
    "invalid_iban",
    "lapsed_mandate",
    "revoked_mandate",
    "changed_account_mandate",
    "single_mandate_claims",
    "budget_persons",
    "deposit_no_owner",
    "deposit_no_trust_account",
    "deposit_two_accounts",
)

INVALID_EMAILS = (
    "max.mustermann@",
    "a b@example.de",
    "kein-at-zeichen.de",
    "erika@@mustermann.de",
    "@web.de",
    "peter.schmidt@gmx..de",
)

# (city, first postal code, last postal code, area code): real cities, plausible postal codes.
_CITIES: tuple[tuple[str, int, int, str], ...] = (
    ("Berlin", 10115, 14199, "030"),
    ("Hamburg", 20095, 22769, "040"),
    ("München", 80331, 81929, "089"),
    ("Köln", 50667, 51149, "0221"),
    ("Frankfurt am Main", 60306, 60599, "069"),
    ("Stuttgart", 70173, 70629, "0711"),
    ("Düsseldorf", 40210, 40629, "0211"),
    ("Leipzig", 4103, 4357, "0341"),
    ("Dortmund", 44135, 44388, "0231"),
    ("Essen", 45127, 45359, "0201"),
    ("Bremen", 28195, 28779, "0421"),
    ("Dresden", 1067, 1328, "0351"),
    ("Hannover", 30159, 30669, "0511"),
    ("Nürnberg", 90402, 90491, "0911"),
    ("Duisburg", 47051, 47279, "0203"),
    ("Bochum", 44787, 44894, "0234"),
    ("Wuppertal", 42103, 42399, "0202"),
    ("Bielefeld", 33602, 33739, "0521"),
    ("Bonn", 53111, 53229, "0228"),
    ("Münster", 48143, 48167, "0251"),
    ("Mannheim", 68159, 68309, "0621"),
    ("Karlsruhe", 76131, 76229, "0721"),
    ("Augsburg", 86150, 86199, "0821"),
    ("Wiesbaden", 65183, 65207, "0611"),
    ("Aachen", 52062, 52080, "0241"),
    ("Braunschweig", 38100, 38126, "0531"),
    ("Kiel", 24103, 24159, "0431"),
    ("Chemnitz", 9111, 9247, "0371"),
    ("Halle (Saale)", 6108, 6132, "0345"),
    ("Magdeburg", 39104, 39130, "0391"),
    ("Freiburg im Breisgau", 79098, 79117, "0761"),
    ("Lübeck", 23552, 23570, "0451"),
    ("Erfurt", 99084, 99099, "0361"),
    ("Rostock", 18055, 18147, "0381"),
    ("Mainz", 55116, 55131, "06131"),
    ("Kassel", 34117, 34134, "0561"),
    ("Potsdam", 14467, 14482, "0331"),
    ("Würzburg", 97070, 97084, "0931"),
    ("Regensburg", 93047, 93059, "0941"),
    ("Göttingen", 37073, 37085, "0551"),
)

_COMMON_STREETS = (
    "Lindenstraße", "Hauptstraße", "Schulstraße", "Gartenstraße", "Bahnhofstraße", "Dorfstraße",
    "Bergstraße", "Birkenweg", "Kirchstraße", "Waldstraße", "Ringstraße", "Mühlenweg",
    "Goethestraße", "Schillerstraße", "Am Markt", "Rosenstraße", "Friedrichstraße", "Eichendorffweg",
    "Parkstraße", "Feldstraße", "Wiesenweg", "Blumenstraße", "Ahornweg", "Königsallee",
    "Beethovenstraße", "Mozartstraße", "Marktplatz", "Uhlandstraße", "Am Rathaus", "Lessingstraße",
)  # fmt: skip

_COMMON_LAST_NAMES = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz",
    "Hoffmann", "Schäfer", "Koch", "Bauer", "Richter", "Klein", "Wolf", "Schröder", "Neumann",
    "Schwarz", "Zimmermann", "Braun", "Krüger", "Hofmann", "Hartmann", "Lange", "Schmitt",
    "Werner", "Schmitz", "Krause", "Meier", "Lehmann", "Köhler", "Jäger", "Özdemir", "Yılmaz",
)  # fmt: skip

# (bank code, BIC): real German banks; IBANs are generated with valid check digits by schwifty.
_BANKS: tuple[tuple[str, str], ...] = (
    ("10070000", "DEUTDEBBXXX"),
    ("10010010", "PBNKDEFFXXX"),
    ("20050550", "HASPDEHHXXX"),
    ("37040044", "COBADEFFXXX"),
    ("50010517", "INGDDEFFXXX"),
    ("60050101", "SOLADEST600"),
    ("70150000", "SSKMDEMMXXX"),
    ("12030000", "BYLADEM1001"),
    ("43060967", "GENODEM1GLS"),
    ("10090000", "BEVODEBBXXX"),
    ("36050105", "SPESDE3EXXX"),
    ("30050110", "DUSSDEDDXXX"),
    ("25050180", "SPKHDE2HXXX"),
    ("86055592", "WELADE8LXXX"),
    ("50050201", "HELADEF1822"),
    ("44050199", "DORTDE33XXX"),
)
_TRUST_BANK_CODE = "20050550"  # deposit partner's bank for the trust pooled accounts


def _german_iban(bank_code: str, account: int) -> str:
    """A German IBAN near ``account`` whose account number passes the bank's own check digit (the
    German account check schwifty applies with ``validate_bban``).

    Why: a random account number fails it about nine times in ten, and the SEPA checks refuse
    such an IBAN; the demo's accounts must be ones a bank could really hold. Tried in order: the
    ten last digits (most banks' methods check the last digit), then numbers spread over the
    range with a prime stride (some methods check other places, some banks use 9 digits).
    Deterministic (no random draw), so the generator's other values stay as they were.
    """
    base = account - account % 10
    strided = ((account * 7 + k * 1_000_003) % 10**digits for digits in (10, 9) for k in range(1, 2000))
    for candidate in itertools.chain(range(base, base + 10), strided):
        iban = IBAN.generate("DE", bank_code=bank_code, account_code=f"{candidate % 10**10:010d}")
        try:
            IBAN(str(iban), validate_bban=True)
        except ValueError:
            continue
        return str(iban)
    raise ValueError(f"no valid account number at bank {bank_code} from {account}")


_EMAIL_DOMAINS = ("web.de", "gmx.de", "t-online.de", "gmail.com", "posteo.de", "mail.de", "outlook.de")
_MOBILE_PREFIXES = ("0151", "0152", "0160", "0162", "0170", "0171", "0172", "0176", "0177", "0157")
_MONTHS_DE = (
    "Januar", "Februar", "März", "April", "Mai", "Juni",
    "Juli", "August", "September", "Oktober", "November", "Dezember",
)  # fmt: skip
_TEAMS = ("Team Nord", "Team Süd", "Team Ost", "Team West", "Team Gewerbe")
_OBJECT_KINDS = ("Wohnanlage", "Wohnanlage", "Mehrfamilienhaus", "Wohn- und Geschäftshaus", "Wohnpark")
_FLOORS = ("EG", "1. OG", "2. OG", "3. OG", "4. OG", "5. OG", "DG")
_SIDES = ("links", "rechts", "Mitte")
_RETURN_REASONS = ("AC04", "AM04", "MD06", "MS02", "AC06")

# Message types (Meldungsarten): (code, name, portal mode), every portal mode at least once.
_MESSAGE_TYPE_CATALOG = (
    ("SCHADEN", "Schadensmeldung", "EINZELMELDUNG"),
    ("HEIZUNG", "Heizung und Warmwasser", "EINZELMELDUNG"),
    ("OBJEKT", "Objektmeldung", "OBJEKTMELDUNG"),
    ("HAUSMITTEILUNG", "Hausmitteilung", "PINNWAND"),
    ("INTERN", "Interner Vorgang (Serviceportal-Sperre)", "SPERRE"),
)
_MESSAGE_SUBJECTS = {
    "SCHADEN": (
        "Wasserschaden im Bad",
        "Fenster schließt nicht",
        "Schimmel im Schlafzimmer",
        "Wohnungstür klemmt",
        "Rauchmelder piept",
        "Abfluss in der Küche verstopft",
    ),
    "HEIZUNG": (
        "Heizung ausgefallen",
        "Heizkörper wird nicht warm",
        "Kein Warmwasser",
    ),
    "OBJEKT": (
        "Aufzug defekt",
        "Haustür schließt nicht richtig",
        "Beleuchtung im Treppenhaus ausgefallen",
        "Sperrmüll im Hof",
    ),
    "HAUSMITTEILUNG": (
        "Ablesung der Heizkostenverteiler am Donnerstag",
        "Treppenhausreinigung: neuer Dienstleister",
        "Wasserabstellung wegen Wartungsarbeiten",
        "Einladung zum Hoffest",
    ),
    "INTERN": (
        "Rechtsstreit – keine Veröffentlichung",
        "Interner Vorgang Versicherungsschaden",
        "Mietminderung in Prüfung",
    ),
}
_CREDITORS = (
    "Sanitär Köhler GmbH",
    "Heizungsbau Weber & Söhne",
    "Elektro Schäfer KG",
    "Aufzugsdienst Nord GmbH",
    "Glaserei Neumann",
    "Schlüsseldienst Krause",
)
_ERP_USERS = ("001", "002", "007", "012", "015")  # three-digit ERP users who enter messages
_MESSAGE_STATUSES = ("OFFEN", "ABGESCHLOSSEN", "STORNIERT")
_NOTES_INTERNAL = (
    "Handwerker beauftragt: Sanitär Köhler GmbH",
    "Rückruf beim Mieter erfolglos, erneut versuchen",
    "Kostenvoranschlag liegt vor, Freigabe durch Eigentümer ausstehend",
    "Versicherung informiert, Schadennummer folgt",
)
_NOTES_PUBLIC = (
    "Vielen Dank für Ihre Meldung, wir kümmern uns darum.",
    "Der Handwerker kommt am Donnerstag zwischen 8 und 12 Uhr.",
    "Die Reparatur ist abgeschlossen.",
    "Bitte gewähren Sie dem Techniker Zugang zur Wohnung.",
)

# Document types (code, name). Which are released for the portal, and which without the time
# filter, is a setting (``portal.document_types``, ``portal.document_types_without_time_filter``).
_DOCUMENT_TYPES = (
    ("MIETVERTRAG", "Mietvertrag"),
    ("NKABR", "Nebenkostenabrechnung"),
    ("HAUSORDNUNG", "Hausordnung"),
    ("PROTOKOLL", "Protokoll Eigentümerversammlung"),
    ("GRUNDRISS", "Grundriss"),
    ("MAHNUNG", "Mahnung"),
    ("SCHRIFTVERKEHR", "Schriftverkehr intern"),
    ("RECHNUNG", "Rechnung (DMS)"),
)

# Payment types (Zahlungsart): LS debits automatically, UEB and DA do not.
_PAYMENT_TYPES = (
    ("LS", "Lastschrift", True, "Hausverwaltung Muster", "Mietkonto", None),
    ("UEB", "Überweisung", False, None, None, None),
    ("DA", "Dauerauftrag", False, None, None, None),
)

# Unit scenarios relative to the business date.
_CURRENT, _NOTICE, _RECENT, _OLD, _NEAR, _FAR, _VACANT = (
    "CURRENT",
    "NOTICE",
    "RECENT",
    "OLD",
    "NEAR",
    "FAR",
    "VACANT",
)
_SEPA_MIGRATION = date(2014, 1, 20)
_PERSONS_PER_UNIT = 1.22  # expected persons created per unit, used to size the object count


@dataclass
class DemoSummary:
    """What ``generate_erp`` wrote: rows per table, the planted edge cases and the inputs.

    ``edge_cases`` maps every key of ``EDGE_CASE_KEYS`` to the sorted person numbers having that
    property (claim numbers for ``single_mandate_claims``). ``document_root`` is the folder the
    documents' relative ``content_path`` points into (compared by no one: the same data can be
    generated into two folders).
    """

    seed: int
    business_date: date
    group: str
    counts: dict[str, int] = field(default_factory=dict)
    edge_cases: dict[str, list[str]] = field(default_factory=dict)
    # where the document files went (documents' content_path is relative to it); not part of the data
    document_root: Path | None = field(default=None, compare=False)


def _money(cents: int) -> Decimal:
    """Cents as a two-decimal ``Decimal`` (exact, dialect-neutral)."""
    return Decimal(cents).scaleb(-2)


def _fold(text: str) -> str:
    """ASCII e-mail local part from a German name (ä -> ae, ß -> ss, drop the rest)."""
    table = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "ı": "i", "é": "e", "è": "e"})
    return re.sub(r"[^a-z0-9.-]", "", text.lower().translate(table).replace(" ", "-"))


def _midnight_utc(day: date) -> datetime:
    """Start of ``day`` in UTC; the base of every generated timestamp."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _state(start: date, move_out: date | None, today: date) -> str:
    """Contract state on ``today``: ``future``, ``ended`` or ``active`` (move-out day still counts)."""
    if start > today:
        return "future"
    if move_out is not None and move_out < today:
        return "ended"
    return "active"


def _add_months(day: date, months: int) -> date:
    """``day`` shifted by whole months (day clamped to 28, enough for collection dates)."""
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, min(day.day, 28))


class _Builder:
    """Builds all rows in memory from one seeded RNG; one instance per ``generate_erp`` call."""

    def __init__(
        self,
        persons: int,
        seed: int,
        business_date: date,
        group: str,
        access_days: int,
        archive_days: int,
    ) -> None:
        self.target_persons = persons
        self.rng = random.Random(seed)
        # the portal-exchange attributes draw from their own stream, so adding one leaves the rest
        self.xrng = random.Random(f"exchange-{seed}")
        self.today = business_date
        self.group = group
        self.access_days = access_days
        self.archive_days = archive_days
        self.base_ts = _midnight_utc(business_date)
        self.rows: dict[str, list[dict[str, Any]]] = {t.name: [] for t in metadata.sorted_tables}
        self.person_by_no: dict[str, dict[str, Any]] = {}
        self.released: dict[str, bool] = {}
        self.object_by_no: dict[str, dict[str, Any]] = {}
        self.unit_by_no: dict[str, dict[str, Any]] = {}
        self.contract_meta: dict[str, dict[str, Any]] = {}
        self.used_locals: dict[str, int] = {}
        self.edge: dict[str, list[str]] = {k: [] for k in EDGE_CASE_KEYS}
        self.forced: list[str] = []
        self.forced_partners = 0
        self.forced_garages = 0
        self.claimed: set[str] = set()
        self.single_mandate_persons: list[str] = []
        self._init_pools(seed)

    # ------------------------------------------------------------------ pools
    def _init_pools(self, seed: int) -> None:
        """Draw the Faker pools once (Faker is slow per call; the RNG picks from the pools)."""
        fake = Faker("de_DE")
        fake.seed_instance(seed)
        self.first_male = sorted({fake.first_name_male() for _ in range(400)})
        self.first_female = sorted({fake.first_name_female() for _ in range(400)})
        faker_last = sorted({fake.last_name() for _ in range(600)})
        self.last_names = list(_COMMON_LAST_NAMES) * 8 + faker_last
        self.streets = list(_COMMON_STREETS) * 3 + sorted({fake.street_name() for _ in range(150)})
        forms = ("GmbH", "AG", "KG", "OHG", "GbR", "e.V.", "Stiftung", "KGaA", "mbH")
        suffixes = ("Immobilien GmbH", "Handels GmbH", "& Partner GbR", "Service GmbH")
        self.companies = [
            c if any(f in c for f in forms) else f"{c} {suffixes[i % len(suffixes)]}"
            for i, c in enumerate(sorted({fake.company() for _ in range(300)}))
        ]

    def _address(self) -> tuple[str, str, str, str]:
        """Random (street with number, postal code, city, area code)."""
        city, low, high, area = self.rng.choice(_CITIES)
        street = f"{self.rng.choice(self.streets)} {self.rng.randint(1, 120)}"
        return street, f"{self.rng.randint(low, high):05d}", city, area

    def _ts(self, max_days: int = 730) -> datetime:
        """A UTC timestamp before the business date (for ``modified_at``)."""
        return self.base_ts - timedelta(seconds=self.rng.randint(60, max_days * 86400))

    def _email(self, first: str | None, last: str | None, company: str | None) -> str:
        """A unique, valid e-mail address derived from the name."""
        if company:
            local = _fold(company.split()[0]) or "info"
            local = f"info.{local}"
        else:
            local = ".".join(p for p in (_fold(first or ""), _fold(last or "")) if p) or "mieter"
        local = re.sub(r"\.+", ".", local).strip(".-") or "mieter"
        n = self.used_locals.get(local, 0)
        self.used_locals[local] = n + 1
        if n:
            local = f"{local}{n + 1}"
        return f"{local}@{self.rng.choice(_EMAIL_DOMAINS)}"

    # ---------------------------------------------------------------- persons
    def new_person(
        self,
        person_type: str,
        address: tuple[str, str, str, str] | None = None,
        company: bool = False,
        last_name: str | None = None,
        payment_type: str | None = None,
    ) -> dict[str, Any]:
        """Append one person row (natural person or company) and return it."""
        rng = self.rng
        no = f"P{len(self.rows['persons']) + 1:07d}"
        street, postal, city, area = address or self._address()
        first: str | None
        last: str | None
        company_name: str | None = None
        title: str | None = None
        if company:
            salutation = "Firma"
            first = last = None
            company_name = rng.choice(self.companies)
        else:
            female = rng.random() < 0.5
            salutation = "Frau" if female else "Herr"
            first = rng.choice(self.first_female if female else self.first_male)
            last = last_name or rng.choice(self.last_names)
            r = rng.random()
            title = "Dr." if r < 0.04 else ("Prof. Dr." if r < 0.045 else None)
        email = self._email(first, last, company_name) if rng.random() < 0.88 else None
        phone = f"{area} {rng.randint(200000, 9999999)}" if rng.random() < 0.6 else None
        mobile = (
            f"{rng.choice(_MOBILE_PREFIXES)} {rng.randint(1000000, 99999999)}"
            if rng.random() < 0.55
            else None
        )
        row = {
            "person_no": no,
            "person_type": person_type,
            "salutation": salutation,
            "title": title,
            "first_name": first,
            "last_name": last,
            "company_name": company_name,
            "email": email,
            "phone": phone,
            "mobile": mobile,
            "street": street,
            "postal_code": postal,
            "city": city,
            "country": "DE",
            "anonymised": False,
            "payment_type_code": payment_type,
            "elv_release_amount": None,
            "modified_at": self._ts(),
        }
        self.rows["persons"].append(row)
        self.person_by_no[no] = row
        return row

    def _tenant_payment_type(self) -> str:
        """Lead tenants: mostly direct debit, some transfer or standing order."""
        r = self.rng.random()
        return "LS" if r < 0.6 else ("UEB" if r < 0.9 else "DA")

    # ---------------------------------------------------------------- catalog
    def build_catalog(self) -> None:
        """Teams, payment types and document types: small fixed tables."""
        self.rows["teams"] = [{"team_id": i + 1, "name": n} for i, n in enumerate(_TEAMS)]
        self.rows["payment_types"] = [
            {
                "code": code,
                "name": name,
                "auto_debit": auto,
                "remittance_line1": l1,
                "remittance_line2": l2,
                "remittance_line3": l3,
            }
            for code, name, auto, l1, l2, l3 in _PAYMENT_TYPES
        ]
        self.rows["document_types"] = [{"code": c, "name": n} for c, n in _DOCUMENT_TYPES]
        self.rows["message_types"] = [
            {"code": c, "name": n, "portal_mode": m} for c, n, m in _MESSAGE_TYPE_CATALOG
        ]

    # ---------------------------------------------------------------- objects
    def build_objects(self) -> None:
        """Objects with owners, caretakers, units, contracts and partners until the person budget is used."""
        rng = self.rng
        budget = int(self.target_persons * 0.97) - 10  # headroom: the last object may overshoot
        k = max(2, self.target_persons // 500)
        # scenarios planted on flats of released objects first, so every size has them
        self.forced = [sc for sc in (_RECENT, _OLD, _NEAR, _FAR) for _ in range(k)]
        rng.shuffle(self.forced)
        self.forced_partners = self.forced_garages = k
        owners: list[str] = []
        caretakers: list[str] = []
        index = 0
        while len(self.rows["persons"]) < budget or index < 2:
            remaining = budget - len(self.rows["persons"])
            n_units = int(rng.triangular(10, 60, 48))
            n_units = max(10, min(n_units, int(remaining / _PERSONS_PER_UNIT)))
            released = index == 0 or (index != 1 and rng.random() < 0.8)
            deposit = index == 0 or rng.random() < 0.25
            self._build_object(index, n_units, released, deposit, owners, caretakers)
            index += 1

    def _build_object(
        self,
        index: int,
        n_units: int,
        released: bool,
        deposit: bool,
        owners: list[str],
        caretakers: list[str],
    ) -> None:
        """One object: its owner, caretaker, team, groups and units with their tenancies."""
        rng = self.rng
        object_no = f"{1001 + index}"
        street_name = rng.choice(self.streets)
        city, low, high, area = rng.choice(_CITIES)
        number = rng.randint(1, 90)
        address = (f"{street_name} {number}", f"{rng.randint(low, high):05d}", city, area)
        # owner: a few owners own several objects
        if owners and rng.random() < 0.2:
            owner_no = rng.choice(owners)
        else:
            owner = self.new_person("EIGENTUEMER", company=rng.random() < 0.3, payment_type="UEB")
            owner_no = owner["person_no"]
            owners.append(owner_no)
        trust_iban = None
        if deposit:
            trust_iban = _german_iban(_TRUST_BANK_CODE, 9100000000 + index * 1000)
        obj = {
            "object_no": object_no,
            "name": f"{rng.choice(_OBJECT_KINDS)} {address[0]}",
            "street": address[0],
            "postal_code": address[1],
            "city": city,
            "country": "DE",
            "owner_person_no": owner_no,
            "team_id": rng.randint(1, len(_TEAMS)) if rng.random() < 0.95 else None,
            "trust_account_iban": trust_iban,
            "modified_at": self._ts(),
        }
        self.rows["objects"].append(obj)
        self.object_by_no[object_no] = obj
        self.released[object_no] = released
        if released:
            self.rows["object_groups"].append({"group_name": self.group, "object_no": object_no})
        if deposit:
            self.rows["object_groups"].append({"group_name": DEPOSIT_GROUP, "object_no": object_no})
        # caretaker for about half of the objects, some serving several objects
        if index == 0 or rng.random() < 0.5:
            if caretakers and rng.random() < 0.35:
                care_no = rng.choice(caretakers)
                internal = self.person_by_no[care_no]["company_name"] is None
            else:
                internal = rng.random() < 0.5
                care = self.new_person("HAUSMEISTER", company=not internal)
                if not internal:
                    care["company_name"] = f"Hausmeisterservice {rng.choice(self.last_names)} GmbH"
                care_no = care["person_no"]
                caretakers.append(care_no)
            self.rows["caretaker_assignments"].append(
                {
                    "object_no": object_no,
                    "person_no": care_no,
                    "role_name": "Hausmeister" if internal else "Hausmeisterdienst",
                    "role_type": "internal" if internal else "external",
                }
            )
        self._build_units(object_no, n_units, released, address, garages=index == 0 or n_units >= 20)

    def _build_units(
        self,
        object_no: str,
        n_units: int,
        released: bool,
        address: tuple[str, str, str, str],
        garages: bool,
    ) -> None:
        """Units (flats first, then commercial, garages, parking) and their contracts.

        ``garages`` guarantees at least two garages (first object and larger objects), so flat
        tenants renting a garage too (two contracts, one portal contact) exist at every size.
        """
        rng = self.rng
        kinds = []
        for _ in range(n_units):
            r = rng.random()
            kinds.append(
                "WOHNUNG" if r < 0.8 else "GARAGE" if r < 0.9 else "STELLPLATZ" if r < 0.95 else "GEWERBE"
            )
        if garages and kinds.count("GARAGE") < 2:
            kinds[-2:] = ["GARAGE", "GARAGE"]
        order = {"WOHNUNG": 0, "GEWERBE": 1, "GARAGE": 2, "STELLPLATZ": 3}
        kinds.sort(key=order.__getitem__)
        rate_cents = rng.randint(750, 1650)  # cold rent per m² of this object
        flat_tenants: list[str] = []  # current plain flat tenants who may also rent a garage
        counters = {"WOHNUNG": 0, "GEWERBE": 0, "GARAGE": 0, "STELLPLATZ": 0}
        for j, kind in enumerate(kinds):
            counters[kind] += 1
            unit_no = f"{object_no}-{j + 1:03d}"
            if kind == "WOHNUNG":
                floor = _FLOORS[min((counters[kind] - 1) // 3, len(_FLOORS) - 1)]
                name = f"Whg. {floor} {_SIDES[(counters[kind] - 1) % 3]}"
                area_cents = rng.randint(3200, 13500)
                rent = area_cents * rate_cents // 100  # cents: m² x €/m²
            elif kind == "GEWERBE":
                floor = "EG"
                name = f"{rng.choice(('Laden', 'Büro', 'Praxis'))} EG {counters[kind]}"
                area_cents = rng.randint(6000, 40000)
                rent = area_cents * (rate_cents + 300) // 100
            elif kind == "GARAGE":
                floor, name, area_cents = "", f"Garage {counters[kind]}", rng.randint(1500, 2000)
                rent = rng.randint(5000, 11000)
            else:
                floor, name, area_cents = "", f"Stellplatz {counters[kind]}", 1250
                rent = rng.randint(3000, 7000)
            unit = {
                "unit_no": unit_no,
                "object_no": object_no,
                "name": name,
                "unit_type": kind,
                "floor": floor or None,
                "area_m2": _money(area_cents),
                "modified_at": self._ts(),
            }
            self.rows["units"].append(unit)
            self.unit_by_no[unit_no] = unit
            self._build_tenancies(unit, rent, released, address, flat_tenants)

    def _scenario(self, unit: dict[str, Any], released: bool) -> str:
        """Pick the tenancy scenario of a unit; forced edge scenarios go to flats of released objects."""
        rng = self.rng
        if released and unit["unit_type"] == "WOHNUNG" and self.forced and rng.random() < 0.5:
            return self.forced.pop()
        r = rng.random()
        if r < 0.84:
            return _CURRENT
        if r < 0.87:
            return _NOTICE
        if r < 0.895:
            return _RECENT
        if r < 0.925:
            return _OLD
        if r < 0.94:
            return _NEAR
        if r < 0.955:
            return _FAR
        return _VACANT

    def _build_tenancies(
        self,
        unit: dict[str, Any],
        rent: int,
        released: bool,
        address: tuple[str, str, str, str],
        flat_tenants: list[str],
    ) -> None:
        """Contracts of one unit according to its scenario (plus now and then a former tenancy)."""
        rng = self.rng
        today = self.today
        scenario = self._scenario(unit, released)
        if scenario == _VACANT:
            return
        long_ago = today - timedelta(days=rng.randint(60, 365 * 20))
        if scenario == _CURRENT:
            start, move_out = long_ago, None
        elif scenario == _NOTICE:
            start, move_out = long_ago, today + timedelta(days=rng.randint(1, 90))
        elif scenario == _RECENT:
            move_out = today - timedelta(days=rng.randint(1, self.archive_days - 2))
            start = move_out - timedelta(days=rng.randint(200, 365 * 15))
        elif scenario == _OLD:
            move_out = today - timedelta(days=rng.randint(self.archive_days + 2, 400))
            start = move_out - timedelta(days=rng.randint(200, 365 * 15))
        elif scenario == _NEAR:
            start, move_out = today + timedelta(days=rng.randint(1, self.access_days - 1)), None
        else:
            start, move_out = today + timedelta(days=rng.randint(self.access_days + 7, 150)), None
        # a former tenancy before a current one
        if scenario == _CURRENT and rng.random() < 0.06 and unit["unit_type"] == "WOHNUNG":
            prev_out = start - timedelta(days=1)
            prev_start = prev_out - timedelta(days=rng.randint(365, 365 * 10))
            self._contract(unit, rent, prev_start, prev_out, None, released, address, 0)
        reuse: str | None = None
        garage = unit["unit_type"] in ("GARAGE", "STELLPLATZ")
        if garage and scenario == _CURRENT and flat_tenants:
            forced = released and self.forced_garages > 0
            if forced or rng.random() < 0.4:
                self.forced_garages -= forced
                reuse = flat_tenants.pop(rng.randrange(len(flat_tenants)))
        self._contract(unit, rent, start, move_out, reuse, released, address, 1, scenario, flat_tenants)

    def _contract(
        self,
        unit: dict[str, Any],
        rent: int,
        start: date,
        move_out: date | None,
        person_no: str | None,
        released: bool,
        address: tuple[str, str, str, str],
        seq: int,
        scenario: str = "",
        flat_tenants: list[str] | None = None,
    ) -> None:
        """One RENTER contract with its lead tenant (new unless given) and maybe partners."""
        rng = self.rng
        state = _state(start, move_out, self.today)
        if person_no is None:
            company = unit["unit_type"] == "GEWERBE"
            home = address if state != "ended" else None
            tenant = self.new_person(
                "MIETER",
                address=home,
                company=company,
                payment_type=self._tenant_payment_type() if state != "ended" else "UEB",
            )
            person_no = tenant["person_no"]
            if unit["unit_type"] == "WOHNUNG" and scenario == _CURRENT and flat_tenants is not None:
                flat_tenants.append(person_no)
        else:
            tenant = self.person_by_no[person_no]
        contract_no = f"{unit['unit_no']}-{seq:02d}"
        self.rows["contracts"].append(
            {
                "contract_no": contract_no,
                "unit_no": unit["unit_no"],
                "person_no": person_no,
                "contract_type": "RENTER",
                "start_date": start,
                "move_out_date": move_out,
                "modified_at": self._ts(),
            }
        )
        self.contract_meta[contract_no] = {
            "object_no": unit["object_no"],
            "unit_no": unit["unit_no"],
            "unit_type": unit["unit_type"],
            "unit_name": unit["name"],
            "person_no": person_no,
            "start": start,
            "move_out": move_out,
            "state": state,
            "released": released,
            "rent": rent,
        }
        forced = released and state == "active" and self.forced_partners > 0
        if unit["unit_type"] == "WOHNUNG" and (forced or rng.random() < 0.15):
            self.forced_partners -= forced
            for _ in range(1 if rng.random() < 0.8 else 2):
                role = "MITBEWOHNER" if rng.random() < 0.7 else "VERTRAGSPARTNER"
                same_name = tenant["last_name"] if rng.random() < 0.6 else None
                partner = self.new_person(
                    role, address=address if state != "ended" else None, last_name=same_name
                )
                self.rows["contract_partners"].append(
                    {"contract_no": contract_no, "person_no": partner["person_no"], "role": role}
                )

    # -------------------------------------------------------------- edge cases
    def plant_edge_cases(self) -> None:
        """Turn a few ordinary persons into the edge cases the portal rules name."""
        rng = self.rng
        k = max(2, self.target_persons // 500)
        per_person: dict[str, list[str]] = {}
        for no, meta in self.contract_meta.items():
            per_person.setdefault(meta["person_no"], []).append(no)
        partner_nos = {r["person_no"] for r in self.rows["contract_partners"]}
        plain_active: list[str] = []
        plain_ended: list[str] = []
        for person_no, nos in per_person.items():
            if len(nos) != 1 or person_no in partner_nos:
                continue
            meta = self.contract_meta[nos[0]]
            person = self.person_by_no[person_no]
            if not meta["released"] or meta["unit_type"] != "WOHNUNG" or person["company_name"]:
                continue
            if meta["state"] == "active" and meta["move_out"] is None:
                plain_active.append(person_no)
            elif meta["state"] == "ended":
                plain_ended.append(person_no)
        rng.shuffle(plain_active)
        rng.shuffle(plain_ended)

        def take(pool: list[str], n: int) -> list[str]:
            picked = [p for p in pool if p not in self.claimed][:n]
            self.claimed.update(picked)
            return picked

        for no in take(plain_active, k):
            p = self.person_by_no[no]
            p.update(last_name=None, company_name=None, salutation=None, title=None)
        for i, no in enumerate(take(plain_active, k)):
            self.person_by_no[no]["email"] = INVALID_EMAILS[i % len(INVALID_EMAILS)]
        for i, no in enumerate(take(plain_active, k)):
            self.person_by_no[no]["person_type"] = "VERTRAGSPARTNER" if i % 2 == 0 else "INTERESSENT"
        for no in take(plain_active, k):
            p = self.person_by_no[no]
            p.update(
                salutation="Firma",
                title=None,
                first_name=None,
                last_name=None,
                company_name=rng.choice(self.companies),
            )
            p["email"] = self._email(None, None, p["company_name"])
        for no in take(plain_ended, k):
            self._anonymise_row(self.person_by_no[no])

    @staticmethod
    def _anonymise_row(p: dict[str, Any]) -> None:
        """Replace personal data the way the ERP anonymises a former tenant."""
        p.update(
            anonymised=True,
            salutation=None,
            title=None,
            first_name=None,
            last_name=ANONYMISED_PLACEHOLDER,
            company_name=None,
            email=None,
            phone=None,
            mobile=None,
            street=None,
            postal_code=None,
            city=None,
        )

    # -------------------------------------------------------------------- SEPA
    def _iban(self) -> tuple[str, str]:
        """A valid German IBAN at a real bank, with its BIC."""
        bank_code, bic = self.rng.choice(_BANKS)
        return _german_iban(bank_code, self.rng.randint(10_000_000, 9_999_999_999)), bic

    def _holder(self, p: dict[str, Any]) -> str:
        """Account holder as printed on the mandate."""
        name = p["company_name"] or " ".join(x for x in (p["first_name"], p["last_name"]) if x)
        return (name or p["person_no"])[:70]

    def build_sepa(self) -> None:
        """Mandates for direct-debit and budget payers, with the lifecycle edge cases."""
        rng = self.rng
        today = self.today
        k = max(2, self.target_persons // 500)
        first_start: dict[str, date] = {}
        for meta in self.contract_meta.values():
            if meta["state"] != "ended":
                no = meta["person_no"]
                first_start[no] = min(first_start.get(no, meta["start"]), meta["start"])
        payers = [no for no in first_start if self.person_by_no[no]["person_type"] == "MIETER"]
        debit = [no for no in payers if self.person_by_no[no]["payment_type_code"] == "LS"]
        transfer = [no for no in payers if self.person_by_no[no]["payment_type_code"] == "UEB"]
        budget = [no for no in transfer if no not in self.claimed]
        rng.shuffle(budget)
        budget = budget[:k]
        self.claimed.update(budget)
        for no in budget:
            self.person_by_no[no]["elv_release_amount"] = _money(
                rng.choice((250, 500, 800, 1000, 1500)) * 100
            )
        self.edge["budget_persons"] = sorted(budget)
        mandates: dict[str, dict[str, Any]] = {}
        for no in sorted(debit + budget):
            # SEPA mandates exist since February 2014 (older debit authorisations were migrated)
            signed = max(first_start[no] - timedelta(days=rng.randint(0, 20)), _SEPA_MIGRATION)
            first = _add_months(date(signed.year, signed.month, 2), 1)
            first_on = first if first <= today else None
            last_on = None
            if first_on is not None:
                last = date(today.year, today.month, 2)
                last_on = last if last <= today else _add_months(last, -1)
            iban, bic = self._iban()
            row = {
                "mandate_id": f"M-{no}-1",
                "person_no": no,
                "mandate_type": "RECURRENT",
                "iban": iban,
                "bic": bic,
                "account_holder": self._holder(self.person_by_no[no]),
                "signed_on": signed,
                "first_collection_on": first_on,
                "last_collection_on": last_on,
                "original_iban": None,
                "revoked_on": None,
            }
            mandates[no] = row
            self.rows["sepa_mandates"].append(row)
        pool = [no for no in debit if no not in self.claimed and mandates[no]["first_collection_on"]]
        rng.shuffle(pool)

        def take(n: int, first_before: date | None = None) -> list[str]:
            free = [p for p in pool if p not in self.claimed]
            if first_before is not None:  # prefer mandates collected long enough to have lapsed
                old = [p for p in free if mandates[p]["first_collection_on"] < first_before]
                old_set = set(old)
                free = old + [p for p in free if p not in old_set]
            picked = free[:n]
            self.claimed.update(picked)
            return sorted(picked)

        self.edge["invalid_iban"] = take(k)
        for no in self.edge["invalid_iban"]:
            iban = mandates[no]["iban"]
            mandates[no]["iban"] = f"DE{(int(iban[2:4]) + 1) % 100:02d}{iban[4:]}"
        self.edge["lapsed_mandate"] = take(k, first_before=_add_months(today, -61))
        for no in self.edge["lapsed_mandate"]:
            m = mandates[no]
            m["last_collection_on"] = _add_months(today, -rng.randint(37, 60))
            m["first_collection_on"] = min(m["first_collection_on"], m["last_collection_on"])
            m["signed_on"] = min(m["signed_on"], m["first_collection_on"])
        self.edge["revoked_mandate"] = take(k)
        for no in self.edge["revoked_mandate"]:
            mandates[no]["revoked_on"] = today - timedelta(days=rng.randint(10, 200))
        self.edge["changed_account_mandate"] = take(k)
        for no in self.edge["changed_account_mandate"]:
            mandates[no]["original_iban"] = self._iban()[0]
        # never collected although signed: a fresh mandate of a long-standing tenant
        for no in take(k):
            mandates[no].update(
                signed_on=today - timedelta(days=rng.randint(3, 25)),
                first_collection_on=None,
                last_collection_on=None,
            )
        self.single_mandate_persons = [no for no in transfer if no not in self.claimed][: max(2, k)]
        self.claimed.update(self.single_mandate_persons)

    def build_claims(self) -> None:
        """Monthly rent claims (current month open, previous month mostly paid) and single-mandate claims."""
        rng = self.rng
        today = self.today
        this_month = date(today.year, today.month, 1)
        months = [_add_months(this_month, -1), this_month]
        seq = 0
        for month in months:
            current = month == this_month
            for contract_no, meta in self.contract_meta.items():
                if meta["start"] > month or (meta["move_out"] is not None and meta["move_out"] < month):
                    continue
                seq += 1
                person = self.person_by_no[meta["person_no"]]
                debit = person["payment_type_code"] == "LS"
                extra = 0
                lines = [f"Miete für {_MONTHS_DE[month.month - 1]} {month.year}", meta["unit_name"]]
                if meta["unit_type"] in ("WOHNUNG", "GEWERBE"):
                    extra = int(self.unit_by_no[meta["unit_no"]]["area_m2"] * 250)
                    lines.append("Nebenkosten-Vorauszahlung")
                lines = lines[: rng.randint(1, 3)]
                amount = meta["rent"] + extra
                status, reason = "OPEN", None
                if not current:
                    r = rng.random()
                    if r < 0.88:
                        status = "PAID"
                    elif r < 0.95:
                        status = "OPEN"
                    elif r < 0.98 and debit:
                        status, reason = "RETURNED", rng.choice(_RETURN_REASONS)
                    else:
                        status = "CANCELLED" if r >= 0.98 else "OPEN"
                self.rows["claims"].append(
                    {
                        "claim_no": f"FO-{month:%Y%m}-{seq:07d}",
                        "person_no": meta["person_no"],
                        "contract_no": contract_no,
                        "object_no": meta["object_no"],
                        "invoice_no": f"R{month:%y%m}{seq:07d}",
                        "invoice_date": month,
                        "due_date": month + timedelta(days=2),
                        "amount": _money(amount),
                        "open_amount": _money(0 if status in ("PAID", "CANCELLED") else amount),
                        "booking_text": "\n".join(lines),
                        "single_mandate_id": None,
                        "status": status,
                        "return_reason": reason,
                        "modified_at": self.base_ts - timedelta(days=(today - month).days, seconds=-3600),
                    }
                )
        by_person: dict[str, tuple[str, dict[str, Any]]] = {}
        for no, meta in self.contract_meta.items():
            by_person.setdefault(meta["person_no"], (no, meta))
        for i, no in enumerate(self.single_mandate_persons):
            seq += 1
            contract_no, meta = by_person[no]
            iban, bic = self._iban()
            mandate_id = f"S-{no}-{i + 1}"
            self.rows["sepa_mandates"].append(
                {
                    "mandate_id": mandate_id,
                    "person_no": no,
                    "mandate_type": "SINGLE",
                    "iban": iban,
                    "bic": bic,
                    "account_holder": self._holder(self.person_by_no[no]),
                    "signed_on": today - timedelta(days=rng.randint(2, 20)),
                    "first_collection_on": None,
                    "last_collection_on": None,
                    "original_iban": None,
                    "revoked_on": None,
                }
            )
            amount = rng.randint(8000, 65000)
            claim_no = f"NK-{today.year - 1}-{seq:07d}"
            self.rows["claims"].append(
                {
                    "claim_no": claim_no,
                    "person_no": no,
                    "contract_no": contract_no,
                    "object_no": meta["object_no"],
                    "invoice_no": f"N{today:%y%m}{seq:07d}",
                    "invoice_date": today - timedelta(days=10),
                    "due_date": today + timedelta(days=5),
                    "amount": _money(amount),
                    "open_amount": _money(amount),
                    "booking_text": f"Nachzahlung BK {today.year - 1}\nGemäß Abrechnung vom {today - timedelta(days=10):%d.%m.}",
                    "single_mandate_id": mandate_id,
                    "status": "OPEN",
                    "return_reason": None,
                    "modified_at": self.base_ts - timedelta(days=10),
                }
            )
            self.edge["single_mandate_claims"].append(claim_no)

    # ---------------------------------------------------------------- deposits
    def build_deposits(self) -> None:
        """Deposit accounts for tenancies in deposit objects, with bookings of every type."""
        rng = self.rng
        today = self.today
        deposit_objects = {
            r["object_no"] for r in self.rows["object_groups"] if r["group_name"] == DEPOSIT_GROUP
        }
        booking_id = 0
        seen_types: set[str] = set()

        def book(account_no: str, kind: str, cents: int, day: date, text: str) -> None:
            nonlocal booking_id
            booking_id += 1
            seen_types.add(kind)
            self.rows["deposit_bookings"].append(
                {
                    "booking_id": booking_id,
                    "account_no": account_no,
                    "booking_type": kind,
                    "amount": _money(cents),
                    "booking_date": day,
                    "text": text,
                }
            )

        for contract_no, meta in self.contract_meta.items():
            if meta["object_no"] not in deposit_objects or meta["unit_type"] not in ("WOHNUNG", "GEWERBE"):
                continue
            if meta["state"] == "future":
                continue
            account_no = f"K-{contract_no}"
            amount = meta["rent"] * 3 // 1000 * 1000
            opened = meta["start"] - timedelta(days=rng.randint(0, 14))
            closed = None
            if meta["move_out"] is not None and meta["move_out"] + timedelta(days=20) <= today:
                closed = meta["move_out"] + timedelta(days=rng.randint(14, 20))
            self.rows["deposit_accounts"].append(
                {
                    "account_no": account_no,
                    "contract_no": contract_no,
                    "deposit_amount": _money(amount),
                    "opened_on": opened,
                    "closed_on": closed,
                    "modified_at": self._ts(),
                }
            )
            if rng.random() < 0.25:
                part = amount // 3
                for i in range(3):
                    book(account_no, "PAYMENT_IN", part if i < 2 else amount - 2 * part,
                         _add_months(opened, i), f"Kautionsrate {i + 1} von 3")  # fmt: skip
            else:
                book(account_no, "PAYMENT_IN", amount, opened, "Mietkaution")
            balance = amount
            end = closed or today
            for year in range(max(opened.year, end.year - 4), end.year):
                interest = max(1, balance * 2 // 1000)
                day = date(year, 12, 31)
                if day <= opened:
                    continue
                book(account_no, "INTEREST", interest, day, f"Zinsen {year}")
                balance += interest
                if rng.random() < 0.4:
                    tax = interest * 26375 // 100000
                    if tax:
                        book(account_no, "WITHHOLDING_TAX", -tax, day, f"Kapitalertragsteuer {year}")
                        balance -= tax
                        soli = tax * 55 // 1000  # 5.5 % of the withholding tax, no draw of the RNG
                        if soli:
                            book(
                                account_no, "SOLIDARITY_SURCHARGE", -soli, day, f"Solidaritätszuschlag {year}"
                            )
                            balance -= soli
            if closed is not None:
                if rng.random() < 0.4:
                    counter = min(balance, rng.randint(5000, 60000))
                    book(
                        account_no,
                        "COUNTERCLAIM",
                        -counter,
                        closed - timedelta(days=3),
                        "Schönheitsreparaturen",
                    )
                    balance -= counter
                book(account_no, "PAYOUT", -balance, closed, "Auszahlung Kaution")
        # make sure every booking type occurs even in tiny databases
        accounts = self.rows["deposit_accounts"]
        if accounts:
            first = accounts[0]["account_no"]
            for kind in s.DEPOSIT_BOOKING_TYPES:
                if kind not in seen_types:
                    sign = 1 if kind in ("PAYMENT_IN", "INTEREST") else -1
                    book(first, kind, sign * 100, today - timedelta(days=1), f"Beispielbuchung {kind}")

    def plant_deposit_edge_cases(self) -> None:
        """Three small objects of the deposit group whose records fail one precondition each, and the
        owners' bank accounts (where a kept deposit goes).

        Runs after every other builder (it draws from a random generator of its own), so the rest
        of the data is the same with or without it. Tenants are prospects without a contract, made
        tenants here (new persons only when a tiny ERP has too few). Objects:
        ``9001`` without owner, ``9002`` without trust pooled account, ``9003`` with one tenant
        holding two deposit accounts beside a tenant with one (who goes over).
        """
        rng = random.Random(f"deposit-edges-{len(self.rows['persons'])}")
        today = self.today
        used = {r["person_no"] for r in self.rows["contracts"]} | {
            r["person_no"] for r in self.rows["contract_partners"]
        }
        prospects = [
            p
            for p in self.rows["persons"]
            if p["person_type"] == "INTERESSENT" and p["person_no"] not in used
        ]
        owner_nos = sorted({o["owner_person_no"] for o in self.rows["objects"] if o["owner_person_no"]})
        next_booking = max((b["booking_id"] for b in self.rows["deposit_bookings"]), default=0)

        def tenant() -> str:
            if prospects:
                person = prospects.pop(0)
                person["person_type"] = "MIETER"
                return str(person["person_no"])
            return str(self.new_person("MIETER")["person_no"])

        def plant(object_no: str, owner: str | None, trust: bool, tenants: list[str]) -> None:
            nonlocal next_booking
            obj = {
                "object_no": object_no,
                "name": f"Kautionsobjekt {object_no}",
                "street": f"Kautionsweg {object_no[-1]}",
                "postal_code": "20095",
                "city": "Hamburg",
                "country": "DE",
                "owner_person_no": owner,
                "team_id": None,
                "trust_account_iban": _german_iban(_TRUST_BANK_CODE, 9100000000 + int(object_no) * 1000)
                if trust
                else None,
                "modified_at": self.base_ts,
            }
            self.rows["objects"].append(obj)
            self.object_by_no[object_no] = obj
            self.released[object_no] = False
            self.rows["object_groups"].append({"group_name": DEPOSIT_GROUP, "object_no": object_no})
            for j, person_no in enumerate(tenants):
                unit_no = f"{object_no}-{j + 1:03d}"
                self.rows["units"].append(
                    {
                        "unit_no": unit_no,
                        "object_no": object_no,
                        "name": f"Whg. EG {_SIDES[j % 3]}",
                        "unit_type": "WOHNUNG",
                        "floor": "EG",
                        "area_m2": _money(rng.randint(4000, 9000)),
                        "modified_at": self.base_ts,
                    }
                )
                start = today - timedelta(days=rng.randint(200, 900))
                contract_no = f"{unit_no}-01"
                self.rows["contracts"].append(
                    {
                        "contract_no": contract_no,
                        "unit_no": unit_no,
                        "person_no": person_no,
                        "contract_type": "RENTER",
                        "start_date": start,
                        "move_out_date": None,
                        "modified_at": self.base_ts,
                    }
                )
                amount = rng.randint(15, 30) * 10000
                account_no = f"K-{contract_no}"
                self.rows["deposit_accounts"].append(
                    {
                        "account_no": account_no,
                        "contract_no": contract_no,
                        "deposit_amount": _money(amount),
                        "opened_on": start,
                        "closed_on": None,
                        "modified_at": self.base_ts,
                    }
                )
                next_booking += 1
                self.rows["deposit_bookings"].append(
                    {
                        "booking_id": next_booking,
                        "account_no": account_no,
                        "booking_type": "PAYMENT_IN",
                        "amount": _money(amount),
                        "booking_date": start,
                        "text": "Mietkaution",
                    }
                )

        owner = owner_nos[0] if owner_nos else None
        plant("9001", None, True, [tenant()])
        plant("9002", owner, False, [tenant()])
        twice = tenant()
        plant("9003", owner, True, [twice, twice, tenant()])
        self.edge["deposit_no_owner"] = ["9001"]
        self.edge["deposit_no_trust_account"] = ["9002"]
        self.edge["deposit_two_accounts"] = [twice]
        # the owners' bank accounts (Eigentümerstamm): a kept deposit goes there by default
        for person_no in owner_nos:
            person = self.person_by_no[person_no]
            bank_code, bic = _BANKS[rng.randrange(len(_BANKS))]
            holder = person["company_name"] or " ".join(
                part for part in (person["first_name"], person["last_name"]) if part
            )
            self.rows["bank_accounts"].append(
                {
                    "person_no": person_no,
                    "iban": _german_iban(bank_code, rng.randint(10**8, 10**10 - 1)),
                    "bic": bic,
                    "account_holder": (holder or person_no)[:70],
                }
            )

    # ------------------------------------------------------ documents, messages
    def build_documents(self) -> None:
        """About one document per contract (100,000 persons: about 100,000), object documents, a few from the DMS.

        Most are PDF, some Word (.docx) or OpenDocument (.odt), for the converter rule; each row's
        ``size_bytes`` is its file's size (:func:`write_document_files` writes the files). Planted
        in the first (released) object: a document above the portal's 100 MB limit, and DMS
        documents with and without recipient type, object number and recipient id.
        """
        rng = self.rng
        xrng = self.xrng
        today = self.today
        doc_id = 0

        def add(
            object_no: str | None,
            unit_no: str | None,
            person_no: str | None,
            doc_type: str,
            title: str,
            day: date,
            ext: str = "pdf",
            source: str = "ERP",
            recipient: tuple[str | None, str | None] = (None, None),
        ) -> None:
            nonlocal doc_id
            doc_id += 1
            folder = object_no or "ohne_objekt"
            self.rows["documents"].append(
                {
                    "document_id": doc_id,
                    "object_no": object_no,
                    "unit_no": unit_no,
                    "person_no": person_no,
                    "doc_type": doc_type,
                    "title": title,
                    "file_name": f"{doc_type.lower()}_{doc_id:07d}.{ext}",
                    "size_bytes": len(SAMPLE_FILES[ext]),
                    "content_path": f"{DOCUMENTS_SUBDIR}/{folder}/{doc_id:07d}.{ext}",
                    "document_date": day,
                    "source": source,
                    "recipient_type": recipient[0],
                    "recipient_id": recipient[1],
                    "modified_at": self._ts(),
                }
            )

        def office_or_pdf() -> str:
            r = xrng.random()
            return "docx" if r < 0.05 else ("odt" if r < 0.08 else "pdf")

        for obj in self.rows["objects"]:
            no = obj["object_no"]
            add(
                no,
                None,
                None,
                "HAUSORDNUNG",
                f"Hausordnung {obj['name']}",
                today - timedelta(days=rng.randint(30, 2500)),
                ext=office_or_pdf(),
            )
            for year in (today.year - 3, today.year - 1):
                add(no, None, None, "PROTOKOLL", f"Protokoll Eigentümerversammlung {year}", date(year, 5, 20))
        for contract_no, meta in self.contract_meta.items():
            if rng.random() < 0.5:
                add(meta["object_no"], meta["unit_no"], meta["person_no"], "MIETVERTRAG",
                    f"Mietvertrag {contract_no}", meta["start"] - timedelta(days=14), ext=office_or_pdf())  # fmt: skip
            if rng.random() < 0.5 and meta["state"] != "future":
                year = today.year - rng.randint(1, 3)
                add(meta["object_no"], meta["unit_no"], meta["person_no"], "NKABR",
                    f"Nebenkostenabrechnung {year}", date(year + 1, 6, 1) if year + 1 < today.year else today - timedelta(days=30))  # fmt: skip
            if rng.random() < 0.15:
                kind = rng.choice(("MAHNUNG", "SCHRIFTVERKEHR", "GRUNDRISS"))
                add(meta["object_no"], meta["unit_no"], meta["person_no"], kind,
                    f"{kind.title()} {contract_no}", today - timedelta(days=rng.randint(1, 900)), ext=office_or_pdf())  # fmt: skip
        # DMS documents: one addressed to a tenant in every 25th object, and the planted cases
        tenants: dict[str, str] = {}
        for meta in self.contract_meta.values():
            if meta["state"] == "active":
                tenants.setdefault(meta["object_no"], meta["person_no"])
        first = self.rows["objects"][0]["object_no"]
        recent = today - timedelta(days=10)
        for index, obj in enumerate(self.rows["objects"]):
            no = obj["object_no"]
            if index % 25 == 0 and no in tenants:
                add(no, None, None, "NKABR", f"Nebenkostenabrechnung {today.year - 1} (DMS)", recent,
                    source="DMS", recipient=("P", tenants[no]))  # fmt: skip
        add(first, None, None, "RECHNUNG", f"Rechnung {_CREDITORS[0]}", recent,
            source="DMS", recipient=("K", "K000001"))  # fmt: skip
        add(
            first,
            None,
            None,
            "NKABR",
            "DMS ohne Empfängertyp",
            recent,
            source="DMS",
            recipient=(None, "P0000001"),
        )
        add(first, None, None, "NKABR", "DMS ohne Empfänger", recent, source="DMS", recipient=("P", None))
        add(None, None, None, "NKABR", "DMS ohne Objektnummer", recent, source="DMS",
            recipient=("P", tenants.get(first, "P0000001")))  # fmt: skip
        # one Word and one OpenDocument file in the first object for sure
        add(first, None, None, "HAUSORDNUNG", "Hausordnung (Word)", recent, ext="docx")
        add(first, None, None, "HAUSORDNUNG", "Hausordnung (OpenDocument)", recent, ext="odt")
        # the edge case: one document above the portal's 100 MB limit, in a released object
        add(first, None, None, "NKABR", "Gesamtabrechnung mit Belegen (Scan)", today - timedelta(days=20))
        self.rows["documents"][-1]["size_bytes"] = OVERSIZED_DOCUMENT_BYTES

    def build_messages(self) -> None:
        """Messages of every type, portal mode and status, with internal and public notes and orders.

        The first object holds every message type in every status, half of them without a team,
        half recent and half old (created before 1 January of last year), and an order on an open
        one; the others draw type, status, team and age at random.
        """
        rng = self.rng
        xrng = self.xrng
        active_by_object: dict[str, list[tuple[str, str]]] = {}
        for meta in self.contract_meta.values():
            if meta["state"] == "active":
                active_by_object.setdefault(meta["object_no"], []).append(
                    (meta["unit_no"], meta["person_no"])
                )
        units_per_object: dict[str, int] = {}
        for u in self.rows["units"]:
            units_per_object[u["object_no"]] = units_per_object.get(u["object_no"], 0) + 1
        codes_by_mode: dict[str, list[str]] = {}
        mode_of: dict[str, str] = {}
        for code, _name, mode in _MESSAGE_TYPE_CATALOG:
            codes_by_mode.setdefault(mode, []).append(code)
            mode_of[code] = mode
        message_id = note_id = order_id = 0
        modes = s.PORTAL_MODES
        weights = (10, 15, 15, 60)
        for index, obj in enumerate(self.rows["objects"]):
            no = obj["object_no"]
            # (type code, status, forced age in days or None, forced "no team", forced order)
            plan: list[tuple[str, str, int | None, bool, bool]] = []
            if index == 0:
                for i, (code, status) in enumerate(
                    (c[0], st) for c in _MESSAGE_TYPE_CATALOG for st in s.MESSAGE_STATUSES
                ):
                    plan.append((code, status, 5 + i if i % 2 == 0 else 600 + i, i % 4 < 2, i == 0))
            for _ in range(max(1, round(units_per_object.get(no, 0) * MESSAGES_PER_UNIT))):
                st = rng.choices(s.MESSAGE_STATUSES, (50, 40, 10))[0]
                mode = rng.choices(modes, weights)[0]
                plan.append((xrng.choice(codes_by_mode[mode]), st, None, False, False))
            for code, status, age_days, no_team, force_order in plan:
                message_id += 1
                mode = mode_of[code]
                unit_no = person_no = None
                if mode in ("EINZELMELDUNG", "SPERRE") and active_by_object.get(no):
                    unit_no, person_no = rng.choice(active_by_object[no])
                if age_days is None:
                    created = self.base_ts - timedelta(seconds=rng.randint(3600, 700 * 86400))
                else:
                    created = self.base_ts - timedelta(days=age_days, seconds=rng.randint(3600, 80000))
                team = (
                    obj["team_id"]
                    if rng.random() < 0.8
                    else (None if rng.random() < 0.5 else rng.randint(1, 5))
                )
                if no_team:
                    team = None
                elif age_days is not None and team is None:
                    team = obj["team_id"]
                self.rows["messages"].append(
                    {
                        "message_id": message_id,
                        "object_no": no,
                        "unit_no": unit_no,
                        "person_no": person_no,
                        "message_type": code,
                        "status": status,
                        "team_id": team,
                        "subject": rng.choice(_MESSAGE_SUBJECTS[code]),
                        "body": f"Gemeldet am {created:%d.%m.%Y} für {obj['name']}.",
                        "notify_by_email": rng.random() < 0.3,
                        "created_at": created,
                        "modified_at": min(self.base_ts, created + timedelta(days=rng.randint(0, 30))),
                        "portal_ticket_id": None,
                        "entered_by": xrng.choice(_ERP_USERS),
                        "portal_status": None,
                        "portal_changed_at": None,
                        "portal_change": None,
                    }
                )
                n_notes = 2 if index == 0 else rng.randint(0, 3)
                for j in range(n_notes):
                    note_id += 1
                    internal = (j == 0) if index == 0 else rng.random() < 0.5
                    self.rows["notes"].append(
                        {
                            "note_id": note_id,
                            "message_id": message_id,
                            "internal": internal,
                            "text": rng.choice(_NOTES_INTERNAL if internal else _NOTES_PUBLIC),
                            "created_at": min(self.base_ts, created + timedelta(hours=rng.randint(1, 240))),
                            "portal_comment_id": None,
                            "entered_by": xrng.choice(_ERP_USERS),
                        }
                    )
                orderable = mode in ("EINZELMELDUNG", "OBJEKTMELDUNG") and status != "STORNIERT"
                if force_order or (orderable and xrng.random() < 0.2):
                    order_id += 1
                    ordered_on = min(self.today, (created + timedelta(days=xrng.randint(0, 10))).date())
                    self.rows["orders"].append(
                        {
                            "order_id": order_id,
                            "message_id": message_id,
                            "creditor_name": xrng.choice(_CREDITORS),
                            "order_date": ordered_on,
                            "created_at": min(
                                self.base_ts,
                                _midnight_utc(ordered_on) + timedelta(hours=xrng.randint(7, 17)),
                            ),
                        }
                    )

    # --------------------------------------------------------------- finishing
    def top_up_persons(self) -> None:
        """Fill the person budget with prospects (INTERESSENT) that have no contract."""
        while len(self.rows["persons"]) < self.target_persons:
            self.new_person("INTERESSENT")

    def classify(self) -> None:
        """Derive the state-based edge-case lists from the finished rows."""
        released = self.released
        by_person: dict[str, list[dict[str, Any]]] = {}
        for meta in self.contract_meta.values():
            by_person.setdefault(meta["person_no"], []).append(meta)
        edge = self.edge
        enabled = set(_PORTAL_DEFAULTS.person_types)
        for no, metas in by_person.items():
            p = self.person_by_no[no]
            rel = [m for m in metas if m["released"]]
            active_rel = [m for m in rel if m["state"] == "active"]
            if len(active_rel) >= 2:
                edge["two_contracts"].append(no)
            if active_rel:
                if not p["last_name"] and not p["company_name"]:
                    edge["no_last_name"].append(no)
                if p["email"] in INVALID_EMAILS:
                    edge["invalid_email"].append(no)
                if p["person_type"] not in enabled:
                    edge["not_enabled_type"].append(no)
                if p["company_name"] and not p["first_name"] and not p["last_name"]:
                    edge["company_tenant"].append(no)
            if p["anonymised"] and any(m["state"] == "ended" for m in rel):
                edge["anonymised"].append(no)
            if len(metas) == 1 and rel:
                m = rel[0]
                if m["state"] == "future":
                    days = (m["start"] - self.today).days
                    key = (
                        "future_start_within_access"
                        if days <= self.access_days
                        else "future_start_beyond_access"
                    )
                    edge[key].append(no)
                elif m["state"] == "ended":
                    days = (self.today - m["move_out"]).days
                    key = "moved_out_within_grace" if days < self.archive_days else "moved_out_beyond_grace"
                    edge[key].append(no)
            if not rel and any(m["state"] == "active" for m in metas):
                edge["unreleased_object_tenants"].append(no)
        for r in self.rows["contract_partners"]:
            meta = self.contract_meta[r["contract_no"]]
            if r["person_no"] not in by_person and meta["released"] and meta["state"] == "active":
                edge["co_residents"].append(r["person_no"])
        edge["owners"] = [o["owner_person_no"] for o in self.rows["objects"] if released[o["object_no"]]]
        edge["caretakers"] = [
            c["person_no"] for c in self.rows["caretaker_assignments"] if released[c["object_no"]]
        ]
        for key, values in edge.items():
            edge[key] = sorted(set(values))


def _insert(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Executemany in chunks (bounded memory in the driver, fast on SQLite and PostgreSQL)."""
    for i in range(0, len(rows), INSERT_CHUNK_ROWS):
        conn.execute(insert(table), list(rows[i : i + INSERT_CHUNK_ROWS]))


def write_document_files(root: Path, documents: Sequence[dict[str, Any]]) -> None:
    """Write every document row's file under ``root`` (its ``content_path``), a copy of its type's sample.

    Why: the portal sync reads, hashes, converts and uploads real files, so the demo ERP needs them
    on disk, and the benchmark needs 100,000 of them in seconds: the bytes come from memory
    (:data:`SAMPLE_FILES`), one ``open``/``write`` per file, folders made once each. A row whose
    ``size_bytes`` is larger than its sample (the oversized edge case) becomes a sparse file of
    that size (``truncate``: the size is there, the disk blocks are not). Existing files are
    overwritten; files no row names are left alone.
    """
    made: set[Path] = set()
    for doc in documents:
        path = root / doc["content_path"]
        folder = path.parent
        if folder not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(folder)
        ext = doc["content_path"].rsplit(".", 1)[-1]
        data = SAMPLE_FILES[ext]
        if ext == "pdf":
            number = b"%07d" % doc["document_id"]
            for label in _PDF_NUMBERED:
                data = data.replace(label + b"0000000", label + number)
        with open(path, "wb") as fh:
            fh.write(data)
            if doc["size_bytes"] > len(data):
                fh.truncate(doc["size_bytes"])


def generate_erp(
    engine: Engine,
    persons: int = 1000,
    seed: int = 42,
    business_date: date = DEFAULT_BUSINESS_DATE,
    group: str = "CASAVI",
    reset: bool = False,
    access_days_before_start: int = DEFAULT_ACCESS_DAYS,
    archive_days_after_move_out: int = DEFAULT_ARCHIVE_DAYS,
    document_dir: str | Path | None = None,
) -> DemoSummary:
    """Fill every ERP table with deterministic German demo data.

    Args:
        engine: target database (SQLite or PostgreSQL); the tables are created if missing.
        persons: size knob; the persons table gets exactly this many rows (a few more for very small
            sizes) and objects, units, contracts, claims, ... scale with it (100,000 persons: about
            2,000 objects and 80,000 units).
        seed: seeds ``random.Random`` and Faker; same seed, size and date give identical rows.
        business_date: "today" of the data; contract states, collection dates and timestamps derive
            from it, never from the clock.
        group: object group of the objects released for the tenant portal (about 80 %).
        reset: drop and recreate the ERP tables first.
        access_days_before_start / archive_days_after_move_out: the portal windows the future-start
            and move-out edge cases are placed around (defaults: ``PortalSettings``).
        document_dir: where the document files go; ``None``: where the portal sync looks by
            default (:func:`connectors.erp.extract.document_root`: the folder of a SQLite ERP
            file, else ``var/documents``). ``content_path`` is relative to it
            (``documents/<object>/<id>.<ext>``).

    Returns:
        DemoSummary with rows per table and the edge cases (see ``EDGE_CASE_KEYS``).

    Raises:
        ValueError: ``persons`` < ``MIN_PERSONS``, or the database already holds ERP data and ``reset`` is False.
    """
    if persons < MIN_PERSONS:
        raise ValueError(
            f"persons={persons}: the demo ERP needs at least {MIN_PERSONS} persons to hold every edge case"
        )
    if reset:
        metadata.drop_all(engine)
    metadata.create_all(engine)
    with engine.connect() as conn:
        existing = conn.execute(select(func.count()).select_from(s.persons)).scalar_one()
    if existing:
        raise ValueError(
            f"the ERP database already holds {existing} persons; pass reset=True (CLI: --reset) to regenerate it"
        )
    b = _Builder(persons, seed, business_date, group, access_days_before_start, archive_days_after_move_out)
    b.build_catalog()
    b.build_objects()
    b.plant_edge_cases()
    b.build_sepa()
    b.build_claims()
    b.build_deposits()
    b.build_documents()
    b.build_messages()
    b.top_up_persons()
    b.plant_deposit_edge_cases()
    b.classify()
    root = document_root(engine.url.render_as_string(hide_password=True), str(document_dir or ""))
    write_document_files(root, b.rows["documents"])
    for table in metadata.sorted_tables:
        with engine.begin() as conn:
            _insert(conn, table, b.rows[table.name])
    return DemoSummary(
        seed=seed,
        business_date=business_date,
        group=group,
        counts={t.name: len(b.rows[t.name]) for t in metadata.sorted_tables},
        edge_cases=b.edge,
        document_root=root,
    )


# ------------------------------------------------------------------ ERP edits


def _next_timestamp(conn: Connection, table: Table, floor: datetime | None = None) -> datetime:
    """One second after the newest ``modified_at`` of ``table`` (and not before ``floor``), in UTC.

    Why: edits must be visible to a ``modified_at`` cursor without reading the clock, so the bump is
    derived from the data itself and stays deterministic.
    """
    newest = conn.execute(select(func.max(table.c.modified_at))).scalar_one_or_none()
    if isinstance(newest, str):  # SQLite without type processing in aggregate results
        newest = datetime.fromisoformat(newest)
    if newest is not None and newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)
    candidates = [t for t in (newest and newest + timedelta(seconds=1), floor) if t is not None]
    return max(candidates) if candidates else _midnight_utc(DEFAULT_BUSINESS_DATE)


def mutate_erp(
    engine: Engine,
    seed: int,
    fraction: float = 0.01,
    business_date: date = DEFAULT_BUSINESS_DATE,
) -> list[str]:
    """Change phone, e-mail or city of a deterministic share of the persons and bump ``modified_at``.

    Why: the "1 % changed" benchmark and the incremental-sync tests need a realistic, repeatable
    delta. Anonymised persons are never touched (the ERP keeps them frozen).

    Args:
        engine: a database filled by ``generate_erp``.
        seed: picks the persons and the new values; same seed and database give the same edit.
        fraction: share of persons to change (at least one person).
        business_date: the changes are stamped on this day (12:00 UTC), or one second after the
            newest existing ``modified_at`` if that is later.

    Returns:
        The changed person numbers, sorted.
    """
    rng = random.Random(f"mutate-{seed}")
    p = s.persons
    with engine.begin() as conn:
        candidates = list(
            conn.execute(
                select(p.c.person_no, p.c.email, p.c.city)
                .where(p.c.anonymised.is_(False))
                .order_by(p.c.person_no)
            )
        )
        if not candidates:
            return []
        n = max(1, round(len(candidates) * fraction))
        picked = sorted(rng.sample(range(len(candidates)), min(n, len(candidates))))
        stamp = _next_timestamp(conn, p, _midnight_utc(business_date) + timedelta(hours=12))
        changes: dict[str, list[dict[str, Any]]] = {"phone": [], "email": [], "city": []}
        for i in picked:
            person_no, email, old_city = candidates[i]
            kind = rng.choice(("phone", "email", "city"))
            if kind == "phone":
                value = f"{rng.choice(_MOBILE_PREFIXES)} {rng.randint(1000000, 99999999)}"
                changes["phone"].append({"b_no": person_no, "b_phone": value})
            elif kind == "email":
                local = (
                    email.split("@", 1)[0]
                    if email and "@" in email and email[0] != "@"
                    else person_no.lower()
                )
                domains = [d for d in _EMAIL_DOMAINS if not (email or "").endswith("@" + d)]
                changes["email"].append({"b_no": person_no, "b_email": f"{local}@{rng.choice(domains)}"})
            else:
                city, low, high, _ = rng.choice([c for c in _CITIES if c[0] != old_city])
                street = f"{rng.choice(_COMMON_STREETS)} {rng.randint(1, 120)}"
                changes["city"].append(
                    {
                        "b_no": person_no,
                        "b_city": city,
                        "b_postal": f"{rng.randint(low, high):05d}",
                        "b_street": street,
                    }
                )
        values: dict[str, dict[str, Any]] = {
            "phone": {"phone": bindparam("b_phone")},
            "email": {"email": bindparam("b_email")},
            "city": {
                "city": bindparam("b_city"),
                "postal_code": bindparam("b_postal"),
                "street": bindparam("b_street"),
            },
        }
        for kind, params in changes.items():
            if params:
                stmt = (
                    update(p)
                    .where(p.c.person_no == bindparam("b_no"))
                    .values(modified_at=stamp, **values[kind])
                )
                conn.execute(stmt, params)
    return sorted(candidates[i][0] for i in picked)


def move_out(engine: Engine, contract_no: str, on: date) -> None:
    """Record a move-out (Auszug) on ``contract_no`` as the ERP clerk would.

    Raises:
        LookupError: no such contract.
    """
    c = s.contracts
    with engine.begin() as conn:
        stamp = _next_timestamp(conn, c)
        done = conn.execute(
            update(c).where(c.c.contract_no == contract_no).values(move_out_date=on, modified_at=stamp)
        ).rowcount
        if not done:
            raise LookupError(f"contract {contract_no} not found in the ERP; nothing moved out")


def remove_co_resident(engine: Engine, contract_no: str, person_no: str) -> None:
    """Remove a co-resident / contract partner from a contract and bump the contract's ``modified_at``.

    Raises:
        LookupError: the person is no partner on that contract.
    """
    cp, c = s.contract_partners, s.contracts
    with engine.begin() as conn:
        done = conn.execute(
            delete(cp).where(cp.c.contract_no == contract_no, cp.c.person_no == person_no)
        ).rowcount
        if not done:
            raise LookupError(f"person {person_no} is no partner on contract {contract_no}; nothing removed")
        stamp = _next_timestamp(conn, c)
        conn.execute(update(c).where(c.c.contract_no == contract_no).values(modified_at=stamp))


def anonymise_person(engine: Engine, person_no: str) -> None:
    """Anonymise a person as the ERP does (placeholder name, contact data removed, flag set).

    Raises:
        LookupError: no such person.
    """
    p = s.persons
    row: dict[str, Any] = {"person_no": person_no}
    _Builder._anonymise_row(row)
    row.pop("person_no")
    with engine.begin() as conn:
        stamp = _next_timestamp(conn, p)
        done = conn.execute(
            update(p).where(p.c.person_no == person_no).values(modified_at=stamp, **row)
        ).rowcount
        if not done:
            raise LookupError(f"person {person_no} not found in the ERP; nothing anonymised")


def table_rows(engine: Engine, tables: Iterable[Table] | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """All rows of the ERP tables ordered by primary key (for determinism checks on small databases)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table in tables or metadata.sorted_tables:
            out[table.name] = [
                tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns))
            ]
    return out
