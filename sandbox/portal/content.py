"""Where the portal sandbox keeps the documents' content: one file per document in its data folder.

Why files and not the database: a document may be 100 MB, and an upload is streamed from the
request to disk without ever being held in memory. A new content is written to a temporary file in
the same folder and renamed over the old one only once it is complete and its digest checked, so a
failed or refused upload keeps the old content, and a re-upload replaces it (never a second copy).
The file is named by the SHA-256 of the document's reference id (any id is a safe file name).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from pathlib import Path

from sqlalchemy.engine.url import make_url

PART_SUFFIX = ".part"


def default_folder(db_url: str) -> Path:
    """The content folder beside a SQLite database file (``portal.sqlite`` -> ``portal-content/``).

    A database that is not a file (``:memory:``, a server) gets a fresh temporary folder.
    """
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        db_file = Path(url.database)
        return db_file.parent / f"{db_file.stem}-content"
    return Path(tempfile.mkdtemp(prefix="portal-sandbox-content-"))


class ContentFolder:
    """The documents' content files; every method is cheap except the caller's own writing.

    Args:
        folder: created when missing; temporary files left by a crash are removed at start.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(f"*{PART_SUFFIX}"):
            leftover.unlink(missing_ok=True)

    def path(self, ref_id: str) -> Path:
        """The file holding a document's content (it may not exist)."""
        return self.folder / hashlib.sha256(ref_id.encode()).hexdigest()

    def temp_path(self, ref_id: str) -> Path:
        """A new temporary file name for an upload of this document (same folder: rename is atomic)."""
        return self.folder / f"{self.path(ref_id).name}.{secrets.token_hex(6)}{PART_SUFFIX}"

    def install(self, temp: Path, ref_id: str) -> None:
        """Make a complete, checked upload the document's content (replaces the old one atomically)."""
        os.replace(temp, self.path(ref_id))

    def drop(self, ref_id: str) -> None:
        """Remove a document's content (a deleted document keeps none)."""
        self.path(ref_id).unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove every content file (``POST /_sandbox/reset``)."""
        for item in self.folder.iterdir():
            if item.is_file():
                item.unlink(missing_ok=True)
