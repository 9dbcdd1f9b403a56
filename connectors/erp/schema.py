"""Reference ERP schema (SQLAlchemy Core), modelled on the iX-Haus / DOMUS 1000 / OrgaMon seeds.

It holds every entity hausflow reads: master data, documents, messages and notes for the tenant
portal, deposit accounts for the deposit partner, claims and mandates for SEPA. Column types are
dialect-neutral so the same tables live in SQLite (default), PostgreSQL and Oracle. Real
installations map their own tables onto these names with views; hausflow reads them, and writes
only where the design says so: ``claims.status`` (SEPA), and the portal exchange
(``connectors/erp/writeback.py``: messages and public notes entered from the portal, keyed by the
portal's ids, and the ``portal_*`` columns of ``messages``; never ``modified_at``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
)

metadata = MetaData()

# Person types (Personentyp) as the ERP knows them.
PERSON_TYPES = ("MIETER", "EIGENTUEMER", "HAUSMEISTER", "MITBEWOHNER", "VERTRAGSPARTNER", "INTERESSENT")

persons = Table(
    "persons",
    metadata,
    Column("person_no", String(20), primary_key=True),
    Column("person_type", String(20), nullable=False),
    Column("salutation", String(20)),  # Herr, Frau, Firma, Divers
    Column("title", String(30)),
    Column("first_name", String(80)),
    Column("last_name", String(80)),
    Column("company_name", String(120)),
    Column("email", String(200)),
    Column("phone", String(40)),
    Column("mobile", String(40)),
    Column("street", String(120)),
    Column("postal_code", String(10)),
    Column("city", String(80)),
    Column("country", String(2)),
    Column("anonymised", Boolean, nullable=False, default=False),
    # payment side (OrgaMon: Zahlungsart, ELV-Freigabebetrag)
    Column("payment_type_code", String(10), ForeignKey("payment_types.code")),
    Column("elv_release_amount", Numeric(12, 2)),
    Column("modified_at", DateTime(timezone=True)),
)

objects = Table(
    "objects",
    metadata,
    Column("object_no", String(20), primary_key=True),
    Column("name", String(120), nullable=False),
    Column("street", String(120)),
    Column("postal_code", String(10)),
    Column("city", String(80)),
    Column("country", String(2)),
    Column("owner_person_no", String(20), ForeignKey("persons.person_no")),
    Column("team_id", Integer, ForeignKey("teams.team_id")),
    # trust pooled account of the deposit partner (Treuhandsammelkonto)
    Column("trust_account_iban", String(34)),
    Column("modified_at", DateTime(timezone=True)),
)

object_groups = Table(
    "object_groups",
    metadata,
    Column("group_name", String(40), primary_key=True),  # e.g. CASAVI, KM_Kautionen
    Column("object_no", String(20), ForeignKey("objects.object_no"), primary_key=True),
)

units = Table(
    "units",
    metadata,
    Column("unit_no", String(30), primary_key=True),
    Column("object_no", String(20), ForeignKey("objects.object_no"), nullable=False),
    Column("name", String(120)),
    Column("unit_type", String(20)),  # WOHNUNG, GARAGE, GEWERBE, STELLPLATZ
    Column("floor", String(20)),
    Column("area_m2", Numeric(10, 2)),
    Column("modified_at", DateTime(timezone=True)),
    Index("ix_units_object", "object_no"),
)

contracts = Table(
    "contracts",
    metadata,
    Column("contract_no", String(30), primary_key=True),
    Column("unit_no", String(30), ForeignKey("units.unit_no"), nullable=False),
    Column("person_no", String(20), ForeignKey("persons.person_no"), nullable=False),  # lead tenant
    Column("contract_type", String(10), nullable=False, default="RENTER"),  # RENTER or OWNER
    Column("start_date", Date, nullable=False),
    Column("move_out_date", Date),
    Column("modified_at", DateTime(timezone=True)),
    Index("ix_contracts_unit", "unit_no"),
    Index("ix_contracts_person", "person_no"),
)

# Co-residents (Mitbewohner) and contract partners (Vertragspartner) from the partner records.
contract_partners = Table(
    "contract_partners",
    metadata,
    Column("contract_no", String(30), ForeignKey("contracts.contract_no"), primary_key=True),
    Column("person_no", String(20), ForeignKey("persons.person_no"), primary_key=True),
    Column("role", String(20), nullable=False),  # MITBEWOHNER or VERTRAGSPARTNER
)

teams = Table(
    "teams",
    metadata,
    Column("team_id", Integer, primary_key=True),
    Column("name", String(80), nullable=False),
)

caretaker_assignments = Table(
    "caretaker_assignments",
    metadata,
    Column("object_no", String(20), ForeignKey("objects.object_no"), primary_key=True),
    Column("person_no", String(20), ForeignKey("persons.person_no"), primary_key=True),
    Column("role_name", String(60), nullable=False, default="Hausmeister"),
    Column("role_type", String(10), nullable=False, default="external"),  # internal or external
)

document_types = Table(
    "document_types",
    metadata,
    Column("code", String(20), primary_key=True),
    Column("name", String(80), nullable=False),
)

# Where a document comes from: the ERP itself or an external DMS (e.g. DocuWare); a DMS document
# names its recipient by type (P person, K creditor), object number and recipient id.
DOCUMENT_SOURCES = ("ERP", "DMS")
RECIPIENT_TYPES = ("P", "K")
documents = Table(
    "documents",
    metadata,
    Column("document_id", Integer, primary_key=True),
    Column("object_no", String(20), ForeignKey("objects.object_no")),  # NULL: a DMS document without one
    Column("unit_no", String(30), ForeignKey("units.unit_no")),
    Column("person_no", String(20), ForeignKey("persons.person_no")),
    Column("doc_type", String(20), ForeignKey("document_types.code"), nullable=False),
    Column("title", String(200), nullable=False),
    Column("file_name", String(200), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("content_path", String(400)),  # relative: to the document folder (see extract.document_root)
    Column("document_date", Date, nullable=False),
    Column("source", String(3), nullable=False, default="ERP", server_default="ERP"),
    Column("recipient_type", String(1)),  # P person, K creditor (Kreditor); DMS documents
    Column("recipient_id", String(20)),  # the recipient's number (EmpfängerHeaderID); DMS documents
    Column("modified_at", DateTime(timezone=True)),
)

# Message types (Meldungsarten) and how each reaches the portal (its "portal mode").
PORTAL_MODES = ("SPERRE", "PINNWAND", "OBJEKTMELDUNG", "EINZELMELDUNG")
MESSAGE_TYPES = PORTAL_MODES  # the old name of the portal modes, kept for readers of it
MESSAGE_STATUSES = ("OFFEN", "ABGESCHLOSSEN", "STORNIERT")
message_types = Table(
    "message_types",
    metadata,
    Column("code", String(20), primary_key=True),
    Column("name", String(80), nullable=False),
    Column("portal_mode", String(20), nullable=False),  # one of PORTAL_MODES
)

# Messages (Meldungen) and their notes. The portal_* columns and entered_by are written by hausflow
# alone (connectors/erp/writeback.py): a message entered from a portal ticket carries the portal's
# ticket id, and the ERP's message list shows the three "Serviceportal" columns.
messages = Table(
    "messages",
    metadata,
    Column("message_id", Integer, primary_key=True),
    Column("object_no", String(20), ForeignKey("objects.object_no"), nullable=False),
    Column("unit_no", String(30), ForeignKey("units.unit_no")),
    Column("person_no", String(20), ForeignKey("persons.person_no")),
    Column("message_type", String(20), ForeignKey("message_types.code"), nullable=False),
    Column("status", String(20), nullable=False),  # OFFEN, ABGESCHLOSSEN, STORNIERT
    Column("team_id", Integer, ForeignKey("teams.team_id")),
    Column("subject", String(200), nullable=False),
    Column("body", Text),
    Column("notify_by_email", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("modified_at", DateTime(timezone=True)),
    Column("portal_ticket_id", String(64), unique=True),  # NULL: made in the ERP
    Column("entered_by", String(3)),  # three-digit ERP user
    Column("portal_status", String(200)),  # "Serviceportal": transferred, or why not
    Column("portal_changed_at", DateTime(timezone=True)),  # last change made in the portal ...
    Column("portal_change", String(200)),  # ... and what it was; cleared when modified_at is later
)

notes = Table(
    "notes",
    metadata,
    Column("note_id", Integer, primary_key=True),
    Column("message_id", Integer, ForeignKey("messages.message_id"), nullable=False),
    Column("internal", Boolean, nullable=False, default=True),
    Column("text", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("portal_comment_id", String(64), unique=True),  # NULL: written in the ERP
    Column("entered_by", String(3)),
    Index("ix_notes_message", "message_id"),
)

# Orders placed for a message (Beauftragung): each makes a public portal comment.
orders = Table(
    "orders",
    metadata,
    Column("order_id", Integer, primary_key=True),
    Column("message_id", Integer, ForeignKey("messages.message_id"), nullable=False),
    Column("creditor_name", String(120), nullable=False),
    Column("order_date", Date, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_orders_message", "message_id"),
)

# Rent deposits (KM deposit interface): one deposit account per tenancy.
deposit_accounts = Table(
    "deposit_accounts",
    metadata,
    Column("account_no", String(30), primary_key=True),
    Column("contract_no", String(30), ForeignKey("contracts.contract_no"), nullable=False, unique=True),
    Column("deposit_amount", Numeric(12, 2), nullable=False),
    Column("opened_on", Date, nullable=False),
    Column("closed_on", Date),
    Column("modified_at", DateTime(timezone=True)),
)

DEPOSIT_BOOKING_TYPES = (
    "PAYMENT_IN",
    "INTEREST",
    "WITHHOLDING_TAX",
    "COUNTERCLAIM",
    "PAYOUT",
    "SOLIDARITY_SURCHARGE",  # Solidaritätszuschlag on the interest, booked with the withholding tax
)
deposit_bookings = Table(
    "deposit_bookings",
    metadata,
    Column("booking_id", Integer, primary_key=True),
    Column("account_no", String(30), ForeignKey("deposit_accounts.account_no"), nullable=False),
    Column("booking_type", String(20), nullable=False),
    Column("amount", Numeric(12, 2), nullable=False),
    Column("booking_date", Date, nullable=False),
    Column("text", String(140)),
)

# Bank accounts of persons (Bankverbindung im Eigentümerstamm): where money for them goes, e.g. a
# kept rent deposit paid to the object's owner. One account per person.
bank_accounts = Table(
    "bank_accounts",
    metadata,
    Column("person_no", String(20), ForeignKey("persons.person_no"), primary_key=True),
    Column("iban", String(34), nullable=False),
    Column("bic", String(11)),
    Column("account_holder", String(70), nullable=False),
)

# Payment types (Zahlungsart): automatic debit or not, with up to three fixed remittance lines.
payment_types = Table(
    "payment_types",
    metadata,
    Column("code", String(10), primary_key=True),
    Column("name", String(60), nullable=False),
    Column("auto_debit", Boolean, nullable=False, default=False),
    Column("remittance_line1", String(70)),
    Column("remittance_line2", String(70)),
    Column("remittance_line3", String(70)),
)

sepa_mandates = Table(
    "sepa_mandates",
    metadata,
    Column("mandate_id", String(35), primary_key=True),
    Column("person_no", String(20), ForeignKey("persons.person_no"), nullable=False),
    Column("mandate_type", String(10), nullable=False, default="RECURRENT"),  # RECURRENT or SINGLE
    Column("iban", String(34), nullable=False),
    Column("bic", String(11)),
    Column("account_holder", String(70), nullable=False),
    Column("signed_on", Date, nullable=False),
    Column("first_collection_on", Date),  # None: never collected yet -> FRST
    Column("last_collection_on", Date),
    Column("original_iban", String(34)),  # set when the debtor's account changed (amendment, SMNDA)
    Column("revoked_on", Date),
    Index("ix_mandates_person", "person_no"),
)

# Open items (Forderungen). Status is the one column hausflow writes back (collected, paid, returned).
CLAIM_STATUSES = ("OPEN", "IN_COLLECTION", "PAID", "RETURNED", "CANCELLED")
claims = Table(
    "claims",
    metadata,
    Column("claim_no", String(30), primary_key=True),
    Column("person_no", String(20), ForeignKey("persons.person_no"), nullable=False),
    Column("contract_no", String(30), ForeignKey("contracts.contract_no")),
    Column("object_no", String(20), ForeignKey("objects.object_no"), nullable=False),
    Column("invoice_no", String(20), nullable=False),
    Column("invoice_date", Date, nullable=False),
    Column("due_date", Date, nullable=False),
    Column("amount", Numeric(12, 2), nullable=False),
    Column("open_amount", Numeric(12, 2), nullable=False),
    Column("booking_text", Text),  # further remittance lines, one per line (Ü2, Ü3, ...)
    Column("single_mandate_id", String(35), ForeignKey("sepa_mandates.mandate_id")),
    Column("status", String(20), nullable=False, default="OPEN"),
    Column("return_reason", String(4)),
    Column("modified_at", DateTime(timezone=True)),
    Index("ix_claims_person", "person_no"),
    Index("ix_claims_status", "status"),
)
