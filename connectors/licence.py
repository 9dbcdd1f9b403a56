"""The licence file: which modules are licensed, for how many users, until when (seed 002).

A licence is a small TOML file the vendor sends (``docs/operations.md``, *Licences*)::

    [licence]
    number = "HF-2026-0042"
    customer = "Hausverwaltung Muster GmbH"
    issued = 2026-01-15
    valid_until = 2027-12-31          # left out: no end date
    users = 25
    modules = ["portal", "owner", "caretaker", "documents_messages", "deposit", "sepa"]

    [signature]
    algorithm = "ed25519"
    value = "base64 of the 64-byte signature"

The signature is detached from what it signs: it covers the *canonical content* of the
``[licence]`` table (:func:`canonical_bytes`: sorted keys, compact JSON, dates as ISO text, after a
fixed prefix), so comments, key order and spacing of the file do not matter, but every value does.
Where the settings name the vendor's public key (``licences.public_key`` or
``licences.public_key_file``) a licence without a matching signature is refused with
:class:`LicenceError`; without a configured key the signature is not checked (and ``show`` says so).

No settings or Prefect here: callers hand in the ``[licences]`` settings
(:func:`licence_from_settings`) or paths. Command line (for the vendor and the admin)::

    python -m connectors.licence keygen --private vendor.pem --public vendor.pub
    python -m connectors.licence sign LICENCE.toml --key vendor.pem
    python -m connectors.licence show LICENCE.toml [--public-key-file vendor.pub]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "MODULES",
    "Licence",
    "LicenceError",
    "canonical_bytes",
    "demo_licence",
    "generate_key_pair",
    "licence_from_settings",
    "load_public_key",
    "read_licence",
    "sign_licence",
    "write_licence",
]

ROOT = Path(__file__).resolve().parent.parent
MODULES: dict[str, str] = {
    "portal": "tenant portal",
    "owner": "owner data in the portal",
    "caretaker": "caretaker data in the portal",
    "documents_messages": "documents and messages",
    "deposit": "deposit interface",
    "sepa": "SEPA",
}
"""The licensable modules: name in the file -> what a person calls it."""
SIGNING_PREFIX = b"hausflow-licence-v1\n"
"""Signed before the content, so a signature over a licence is one over nothing else."""


class LicenceError(Exception):
    """The licence file cannot be used: missing, unreadable, incomplete, or not matching its
    signature. The message names the file, what is wrong and what to do."""


@dataclass(frozen=True)
class Licence:
    """A licence as hausflow uses it: from a file, or from the settings' booleans (no file)."""

    number: str
    customer: str
    modules: frozenset[str]
    users: int | None
    valid_until: date | None
    issued: date | None = None
    source: str = "settings"
    signature: str = "not checked"  # "valid", "not checked (no vendor key configured)", "none"
    unknown_modules: tuple[str, ...] = field(default=())

    @property
    def from_file(self) -> bool:
        """Whether a licence file is the source (else the ``[licences]`` booleans)."""
        return self.source != "settings"

    def expired(self, today: date) -> bool:
        """Whether the end date has passed (the end date itself is still valid)."""
        return self.valid_until is not None and today > self.valid_until

    def has(self, module: str, today: date) -> bool:
        """Whether ``module`` is licensed and the licence valid on ``today``."""
        return module in self.modules and not self.expired(today)

    def why_not(self, module: str, today: date) -> str | None:
        """Why ``module`` may not run on ``today``, in words for the log; ``None`` when it may."""
        what = MODULES.get(module, module)
        if self.expired(today):
            return (
                f"the licence {self.number} ({self.source}) expired on {self.valid_until:%d.%m.%Y}: the {what} "
                "does not run; install the renewed licence file from the vendor"
            )
        if module not in self.modules:
            if self.from_file:
                return (
                    f"the {what} ({module}) is not licensed in licence {self.number} ({self.source}, modules: "
                    f"{', '.join(sorted(self.modules)) or 'none'}); ask the vendor for a licence with it"
                )
            return (
                f"the {what} is not licensed (licences.{module} = false and no licence file in licences.file)"
            )
        return None

    def describe(self) -> list[str]:
        """The licence in lines for a person (``./hausflow licence``)."""
        lines = [
            f"Licence        {self.number}" + (f" for {self.customer}" if self.customer else ""),
            f"Source         {self.source}",
            f"Signature      {self.signature}",
            f"Issued         {self.issued:%d.%m.%Y}" if self.issued else "Issued         -",
            f"Valid until    {self.valid_until:%d.%m.%Y}"
            if self.valid_until
            else "Valid until    no end date",
            f"Users          {self.users if self.users is not None else '-'}",
            "Modules",
        ]
        for name, what in MODULES.items():
            lines.append(f"  {'yes' if name in self.modules else 'no ':<4} {name:<20} {what}")
        if self.unknown_modules:
            lines.append(f"  unknown to this version (ignored): {', '.join(self.unknown_modules)}")
        return lines


# ---- canonical content and keys ----------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"a licence holds text, numbers, dates and lists, not {type(value).__name__}")


def canonical_bytes(content: Mapping[str, Any]) -> bytes:
    """What the signature covers: the prefix, then the ``[licence]`` table as compact JSON with
    sorted keys and dates as ISO text (UTF-8). Independent of the file's layout and comments."""
    text = json.dumps(
        dict(content), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain
    )
    return SIGNING_PREFIX + text.encode("utf-8")


def generate_key_pair() -> tuple[bytes, str]:
    """A new Ed25519 key pair: the private key as PEM (PKCS#8, unencrypted) and the public key as
    base64 of its 32 raw bytes (what ``licences.public_key`` takes)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, public_key_text(private.public_key())


def public_key_text(key: Ed25519PublicKey) -> str:
    """The public key as base64 of its 32 raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def load_public_key(text: str) -> Ed25519PublicKey:
    """A vendor key given as PEM or as base64 of the 32 raw bytes.

    Raises:
        LicenceError: neither, or not an Ed25519 key.
    """
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
            if not isinstance(key, Ed25519PublicKey):
                raise LicenceError(f"the vendor key is a {type(key).__name__}, not an Ed25519 key")
            return key
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise LicenceError(
            "the vendor's public key (licences.public_key / licences.public_key_file) is not an Ed25519 key "
            f"in PEM or base64 ({exc}); copy it as the vendor sent it"
        ) from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The vendor's private key from a PEM file (unencrypted PKCS#8, as :func:`generate_key_pair` writes).

    Raises:
        LicenceError: unreadable, or not an Ed25519 private key.
    """
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise LicenceError(f"cannot read the private key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LicenceError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


# ---- reading -----------------------------------------------------------------------------------
def _field(content: Mapping[str, Any], name: str, kind: type | tuple[type, ...], path: Path) -> Any:
    value = content.get(name)
    if value is None or not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise LicenceError(
            f"the licence file {path} lacks a valid {name!r} in [licence] (found {value!r}); "
            "install the file as the vendor sent it"
        )
    return value


def _date(content: Mapping[str, Any], name: str, path: Path) -> date | None:
    value = content.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = date.fromisoformat(value)
    if not isinstance(value, date):
        raise LicenceError(f"the licence file {path}: {name} = {value!r} is not a date (YYYY-MM-DD)")
    return value


def read_licence(path: Path, public_key: Ed25519PublicKey | None = None) -> Licence:
    """Read and check a licence file.

    Args:
        path: the TOML file.
        public_key: the vendor's key; given, the ``[signature]`` must match the canonical content.

    Returns:
        The licence (its ``signature`` says whether it was checked).

    Raises:
        LicenceError: missing or unreadable file, a required field missing or of the wrong kind,
            no signature although a vendor key is configured, or a signature that does not match
            (a changed file).
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LicenceError(
            f"the licence file {path} (licences.file) is missing: install the licence the vendor sent "
            "(docs/operations.md, Licences)"
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LicenceError(f"the licence file {path} cannot be read: {exc}") from None
    content = document.get("licence")
    if not isinstance(content, dict):
        raise LicenceError(
            f"the licence file {path} has no [licence] table; install the file the vendor sent"
        )
    number = str(_field(content, "number", str, path))
    modules = _field(content, "modules", list, path)
    if not all(isinstance(m, str) for m in modules):
        raise LicenceError(f"the licence file {path}: modules must be a list of names, found {modules!r}")
    users = int(_field(content, "users", int, path))
    if users < 1:
        raise LicenceError(f"the licence file {path}: users = {users} (at least 1)")
    signature_state = "none (the file is not signed)"
    signature = document.get("signature")
    if public_key is not None:
        if not isinstance(signature, dict) or not isinstance(signature.get("value"), str):
            raise LicenceError(
                f"the licence file {path} carries no [signature], but a vendor key is configured "
                "(licences.public_key): hausflow refuses unsigned licences there; install the signed file"
            )
        if str(signature.get("algorithm", "ed25519")).lower() != "ed25519":
            raise LicenceError(
                f"the licence file {path} is signed with {signature.get('algorithm')!r}; hausflow checks ed25519"
            )
        try:
            public_key.verify(base64.b64decode(signature["value"], validate=True), canonical_bytes(content))
        except (InvalidSignature, binascii.Error, ValueError):
            raise LicenceError(
                f"the licence file {path} does not match its signature: it was changed after the vendor "
                "signed it, or signed with another key than licences.public_key. hausflow refuses it; "
                "install the file exactly as the vendor sent it"
            ) from None
        signature_state = "valid (Ed25519, the vendor's key)"
    elif isinstance(signature, dict):
        signature_state = "not checked (no vendor key configured in licences.public_key)"
    known = frozenset(m for m in modules if m in MODULES)
    return Licence(
        number=number,
        customer=str(content.get("customer", "")),
        modules=known,
        users=users,
        valid_until=_date(content, "valid_until", path),
        issued=_date(content, "issued", path),
        source=str(path),
        signature=signature_state,
        unknown_modules=tuple(m for m in modules if m not in MODULES),
    )


def resolve(path_text: str) -> Path:
    """A path of the settings: absolute as given, relative from the checkout."""
    path = Path(path_text).expanduser()
    return path if path.is_absolute() else ROOT / path


def licence_from_settings(licences: Any) -> Licence:
    """The licence in force for ``config.settings.Licences``: the file's when ``file`` is set,
    else the booleans' (no users, no end date).

    Raises:
        LicenceError: as :func:`read_licence`, or a vendor key that cannot be read.
    """
    if not licences.file:
        return Licence(
            number="(settings)",
            customer="",
            modules=frozenset(m for m in MODULES if getattr(licences, m, False)),
            users=None,
            valid_until=None,
            signature="none (no licence file: the [licences] settings)",
        )
    key_text = licences.public_key
    if not key_text and licences.public_key_file:
        try:
            key_text = resolve(licences.public_key_file).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise LicenceError(
                f"the vendor key file {licences.public_key_file} (licences.public_key_file) cannot be read: {exc}"
            ) from None
    return read_licence(resolve(licences.file), load_public_key(key_text) if key_text else None)


# ---- writing and signing -----------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"a licence holds text, numbers, dates and lists, not {type(value).__name__}")


def write_licence(
    path: Path, content: Mapping[str, Any], private_key: Ed25519PrivateKey | None = None
) -> Path:
    """Write ``content`` as the ``[licence]`` table of a licence file, signed when a key is given.

    Written to a temporary file and renamed: a reader never sees half a licence.
    """
    lines = ["# hausflow licence (docs/operations.md, Licences)", "[licence]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in content.items() if value is not None]
    if private_key is not None:
        value = base64.b64encode(private_key.sign(canonical_bytes(content))).decode("ascii")
        lines += ["", "[signature]", 'algorithm = "ed25519"', f'value = "{value}"']
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def sign_licence(path: Path, private_key: Ed25519PrivateKey, out: Path | None = None) -> Path:
    """Sign the ``[licence]`` table of ``path`` (an earlier signature is replaced); write to ``out``
    (default: in place). Returns the path written.

    Raises:
        LicenceError: the file cannot be read or lacks what a licence needs.
    """
    read_licence(path)  # the fields are complete before anyone signs them
    content = tomllib.loads(path.read_text(encoding="utf-8"))["licence"]
    return write_licence(out or path, content, private_key)


def demo_licence(folder: Path, today: date, days: int = 365) -> tuple[Path, Path, bool]:
    """The demo licence of ``./hausflow up``: every module, 10 users, valid ``days`` from ``today``,
    signed with a demo vendor key made here on first use (``demo-vendor.pem``, mode 600).

    An existing demo licence that still verifies and has not expired is kept.

    Returns:
        The licence file, the demo vendor's public-key file, and whether the licence was (re)made.
    """
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / "demo-vendor.pem", folder / "demo-vendor.pub"
    if not (private_path.exists() and public_path.exists()):
        pem, public = generate_key_pair()
        _write_private(private_path, pem)
        public_path.write_text(public + "\n", encoding="ascii")
    licence_path = folder / "hausflow-demo.lic.toml"
    try:
        current = read_licence(licence_path, load_public_key(public_path.read_text(encoding="ascii")))
        if not current.expired(today) and set(current.modules) == set(MODULES):
            return licence_path, public_path, False
    except LicenceError:
        pass  # missing, or made with an earlier demo key: make it again
    content = {
        "number": f"DEMO-{today:%Y%m%d}",
        "customer": "Demo (./hausflow up)",
        "issued": today,
        "valid_until": date.fromordinal(today.toordinal() + days),
        "users": 10,
        "modules": list(MODULES),
    }
    write_licence(licence_path, content, load_private_key(private_path))
    return licence_path, public_path, True


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m connectors.licence keygen|sign|show``; exit 0, 1 for a refused licence, 2 usage."""
    parser = argparse.ArgumentParser(prog="python -m connectors.licence", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    keygen = commands.add_parser("keygen", help="a new vendor key pair (private PEM, public base64)")
    keygen.add_argument("--private", type=Path, required=True, help="where the private key goes (mode 600)")
    keygen.add_argument("--public", type=Path, required=True, help="where the public key goes")
    sign = commands.add_parser("sign", help="sign a licence file's [licence] table with the vendor's key")
    sign.add_argument("licence", type=Path)
    sign.add_argument("--key", type=Path, required=True, help="the vendor's private key (PEM)")
    sign.add_argument("--out", type=Path, help="write the signed file here (default: in place)")
    show = commands.add_parser("show", help="show a licence file, its signature checked with a vendor key")
    show.add_argument("licence", type=Path)
    show.add_argument("--public-key", help="the vendor's public key (base64 or PEM)")
    show.add_argument("--public-key-file", type=Path, help="a file holding it")
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            pem, public = generate_key_pair()
            _write_private(args.private, pem)
            args.public.write_text(public + "\n", encoding="ascii")
            print(f"Private key: {args.private} (keep it with the vendor); public key: {public}")
        elif args.command == "sign":
            written = sign_licence(args.licence, load_private_key(args.key), args.out)
            print(f"Signed {written}.")
        else:
            key_text = args.public_key or (args.public_key_file.read_text() if args.public_key_file else "")
            licence = read_licence(args.licence, load_public_key(key_text) if key_text else None)
            print("\n".join(licence.describe()))
    except LicenceError as exc:
        print(f"Refused: {exc}.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
