"""What the document upload needs from the disk: digests, file types, PDF conversion, streaming.

The portal takes PDF, JPEG and PNG (``docs/portal-exchange.md``); Word and OpenDocument files
(``.doc .docx .odt .rtf``) are converted to PDF with LibreOffice first and never sent
unconverted. A document's ``version`` is the SHA-256 of its source file; :class:`DigestCache`
keeps a run from reading unchanged files again. Uploads stream the file (:func:`stream_file`)
with an RFC 9530 ``Content-Digest`` (:func:`content_digest_header`), so memory does not grow with
a file's size.

No Prefect here: plain functions over paths, for the tasks to call.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "CONVERTIBLE_SUFFIXES",
    "DOCUMENT_MIME_TYPES",
    "DigestCache",
    "content_digest_header",
    "convert_to_pdf",
    "file_digest",
    "mime_type",
    "needs_conversion",
    "stream_file",
]

CHUNK_BYTES = 1024 * 1024
CONVERTIBLE_SUFFIXES = frozenset({".doc", ".docx", ".odt", ".rtf"})
DOCUMENT_MIME_TYPES = {
    ".pdf": "application/pdf",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
}
# a file changed this recently may change again within the same mtime tick: its digest is not
# cached (the "racy" case git knows too), so a later change of equal size is never missed
_RACY_SECONDS = 2.0


def file_digest(path: Path | str) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MB chunks (memory does not grow with the size).

    Raises:
        OSError: the file is missing or unreadable.
    """
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


class DigestCache:
    """Digests of files by path, kept while size and modification time (ns) are unchanged.

    The caller persists it as plain data (:meth:`to_dict` / :meth:`from_dict`, JSON-ready; no
    pickle). A file whose size or ``mtime_ns`` differs is read again. A file changed less than
    two seconds before it was read is not cached (its next change could keep size and mtime),
    nor one that changed while it was read.

    Args:
        entries: ``{absolute path: [size, mtime_ns, hex digest]}``, as :meth:`to_dict` gave it.
        digest: how a file is read (default :func:`file_digest`).

    Attributes:
        reads: how many files this cache has read (the rest came from the cache).
        unsettled: how many of those it could not remember (changed just now, or while read):
            until they are read again, a run cannot vouch for them by their ``stat`` alone.
    """

    def __init__(
        self,
        entries: Mapping[str, Any] | None = None,
        digest: Callable[[Path], str] = file_digest,
    ) -> None:
        self._entries: dict[str, tuple[int, int, str]] = {}
        self._used: set[str] = set()
        self._changed: set[str] = set()
        self._dropped: set[str] = set()
        self._digest = digest
        self.reads = 0
        self.unsettled = 0
        for key, value in (entries or {}).items():
            entry = _entry(value)
            if entry is not None:
                self._entries[str(key)] = entry

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DigestCache:
        """The cache from what :meth:`to_dict` gave; malformed entries are dropped, not trusted."""
        return cls(data)

    def to_dict(self, only_used: bool = False) -> dict[str, list[Any]]:
        """The entries as plain data; ``only_used``: those looked up since this cache was made
        (drops files no longer in the ERP)."""
        return {
            key: list(entry)
            for key, entry in sorted(self._entries.items())
            if not only_used or key in self._used
        }

    def digest(self, path: Path | str) -> str:
        """The file's SHA-256 (hex), from the cache if size and mtime are unchanged.

        Raises:
            OSError: the file is missing or unreadable.
        """
        file = Path(path).absolute()
        key = str(file)
        self._used.add(key)
        before = file.stat()
        held = self._entries.get(key)
        if held is not None and held[:2] == (before.st_size, before.st_mtime_ns):
            return held[2]
        started = time.time_ns()
        self.reads += 1
        value = self._digest(file)
        after = file.stat()
        unchanged = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
        racy = after.st_mtime_ns >= started - int(_RACY_SECONDS * 1e9)
        if unchanged and not racy:
            self._entries[key] = (after.st_size, after.st_mtime_ns, value)
            self._changed.add(key)
            self._dropped.discard(key)
        else:
            self.unsettled += 1
            if self._entries.pop(key, None) is not None:
                self._changed.discard(key)
                self._dropped.add(key)
        return value

    def changed(self) -> dict[str, tuple[int, int, str]]:
        """The entries made or renewed since this cache was built, for an incremental save
        (``StateStore.save_file_digests(changed, gone)``)."""
        return {key: self._entries[key] for key in sorted(self._changed) if key in self._entries}

    def gone(self) -> list[str]:
        """The paths whose entries are to be forgotten: not looked up since this cache was built
        (files no longer in the ERP), or no longer trusted (changed while being read)."""
        return sorted((set(self._entries) - self._used) | self._dropped)


def _entry(value: Any) -> tuple[int, int, str] | None:
    if not isinstance(value, list | tuple) or len(value) != 3:
        return None
    size, mtime_ns, digest = value
    if not isinstance(size, int) or not isinstance(mtime_ns, int) or not isinstance(digest, str):
        return None
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return None
    return size, mtime_ns, digest


def needs_conversion(file_name: str) -> bool:
    """Whether the file is a Word or OpenDocument text (``.doc .docx .odt .rtf``): PDF first."""
    return Path(file_name).suffix.lower() in CONVERTIBLE_SUFFIXES


def mime_type(file_name: str) -> str | None:
    """The portal's content type of a file (PDF, JPEG, PNG); ``None``: the portal does not take it."""
    return DOCUMENT_MIME_TYPES.get(Path(file_name).suffix.lower())


def _not_installed(program: str) -> str:
    return (
        f"LibreOffice ({program}) is not installed: install libreoffice-writer-nogui; "
        "the document is not sent unconverted"
    )


def convert_to_pdf(
    sources: list[Path], out_dir: Path, program: str = "soffice", timeout_s: float = 120
) -> dict[Path, Path | str]:
    """Convert Word and OpenDocument files to PDF, many in one LibreOffice call.

    One call because LibreOffice's start costs about a second, each document a fraction of it.
    Every call gets a throwaway user profile (``-env:UserInstallation``): concurrent calls do not
    collide on a profile's lock, and no person's LibreOffice profile is touched. The sources are
    linked into a scratch folder under numbered names, so odd names and two sources with the
    same name (``a/Vertrag.docx``, ``b/Vertrag.odt``) do not overwrite each other; each PDF ends
    up in a folder of its own under ``out_dir``, named like its source (``Vertrag.pdf``).

    If LibreOffice hangs on a document past ``timeout_s``, it is stopped; the PDFs it finished
    are kept, the document it was on fails with the reason, and the ones after it are converted
    in a further call (a damaged document costs one timeout, not the batch).

    Args:
        sources: the files to convert.
        out_dir: where the PDFs go (created if missing).
        program: LibreOffice's program (``[portal] converter``), a name on ``PATH`` or a path.
        timeout_s: for one LibreOffice call.

    Returns:
        For every source the PDF's path, or the reason (a sentence) why there is none. Nothing
        is raised for a single file.
    """
    results: dict[Path, Path | str] = {}
    executable = shutil.which(program)
    if executable is None:
        return dict.fromkeys(sources, _not_installed(program))
    todo: list[Path] = []
    for source in dict.fromkeys(sources):  # each once, in order
        try:
            size = source.stat().st_size
        except OSError as exc:
            results[source] = f"the file cannot be read: {exc.strerror or exc}"
            continue
        if not source.is_file():
            results[source] = "not a file"
        elif size == 0:
            results[source] = "the file is empty"
        else:
            todo.append(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hausflow-convert-") as scratch:
        while todo:
            todo = _convert_batch(executable, todo, Path(scratch), out_dir, timeout_s, results)
    return {source: results[source] for source in dict.fromkeys(sources)}


def _convert_batch(
    executable: str,
    sources: list[Path],
    scratch: Path,
    out_dir: Path,
    timeout_s: float,
    results: dict[Path, Path | str],
) -> list[Path]:
    """One LibreOffice call; fills ``results`` and returns what is left to convert after a timeout."""
    work = Path(tempfile.mkdtemp(prefix="batch-", dir=scratch))
    inputs, outputs = work / "in", work / "out"
    inputs.mkdir()
    outputs.mkdir()
    staged: list[Path] = []
    for n, source in enumerate(sources):
        link = inputs / f"{n}{source.suffix.lower()}"
        try:
            link.symlink_to(source.resolve())
        except OSError:
            shutil.copyfile(source, link)
        staged.append(link)
    command = [
        executable,
        f"-env:UserInstallation={(work / 'profile').as_uri()}",
        "--headless",
        "--invisible",
        "--norestore",
        "--nologo",
        "--nodefault",
        "--nolockcheck",
        "--convert-to",
        "pdf",
        "--outdir",
        str(outputs),
        *map(str, staged),
    ]
    timed_out = False
    log = ""
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout stops soffice.bin too
            env={**os.environ, "HOME": str(work)},
        )
    except OSError as exc:
        for source in sources:
            results[source] = f"LibreOffice ({executable}) could not be started: {exc.strerror or exc}"
        return []
    try:
        out, _ = process.communicate(timeout=timeout_s)
        log = out.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process)
    left: list[Path] = []
    stuck = False
    for n, source in enumerate(sources):
        pdf = outputs / f"{n}.pdf"
        if _complete_pdf(pdf):
            target = Path(tempfile.mkdtemp(prefix=f"{source.stem[:40]}-", dir=out_dir)) / f"{source.stem}.pdf"
            shutil.move(pdf, target)
            results[source] = target
        elif timed_out and not stuck:
            # LibreOffice converts in order: this is the one it hung on; the rest get another call
            stuck = True
            results[source] = (
                f"LibreOffice did not finish converting it within {timeout_s:g} s and was stopped; "
                "the document is not sent unconverted"
            )
        elif timed_out:
            left.append(source)
        else:
            detail = _last_error(log)
            results[source] = (
                "LibreOffice produced no PDF: the file may be damaged, protected by a password or "
                f"not a document of its type{f' ({detail})' if detail else ''}; the document is not "
                "sent unconverted"
            )
    shutil.rmtree(work, ignore_errors=True)
    return left


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.communicate()


def _complete_pdf(path: Path) -> bool:
    """A PDF LibreOffice finished: it starts with ``%PDF-`` and ends with ``%%EOF`` (written last)."""
    try:
        size = path.stat().st_size
        if size < 16:
            return False
        with path.open("rb") as f:
            head = f.read(5)
            f.seek(max(0, size - 1024))
            tail = f.read()
    except OSError:
        return False
    return head == b"%PDF-" and b"%%EOF" in tail


def _last_error(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip().lower().startswith("error")]
    return lines[-1][:200] if lines else ""


async def stream_file(path: Path | str, chunk_size: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    """The file's bytes, chunk by chunk, for ``httpx`` (``content=stream_file(path)``).

    Each read runs in a worker thread (a slow disk or network share does not stall the event
    loop); one chunk is held at a time, so memory does not grow with the file's size. Chunks of
    1 MB, not 256 KB: each hop to the thread and back costs about 0.25 ms of CPU, which at 256 KB
    took a fifth of a 100 MB upload's time on two cores (bench/documents.py).

    Raises:
        OSError: the file is missing or unreadable (when iteration starts).
    """
    f: BinaryIO = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, chunk_size):
            yield chunk
    finally:
        f.close()


def content_digest_header(hex_digest: str) -> str:
    """The RFC 9530 ``Content-Digest`` value of a SHA-256 given as hex: ``sha-256=:<base64>:``."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(hex_digest)).decode('ascii')}:"


def first_changed_file(known: Iterable[tuple[str, int, int]]) -> str | None:
    """The first of ``known``'s files whose size or modification time is no longer the one its
    digest was read at (or that is gone); ``None`` when every one is as it was.

    Why: a run that finds the ERP unchanged must still notice a document's file replaced on disk
    (a DMS writes files without the ERP knowing). ``known`` is the digest cache's entries (path,
    size, ``mtime_ns``): every file the last run read, as it read it. One ``stat`` per file costs
    a fraction of reading the files, or even the ERP's rows that name them.
    """
    for path, size, mtime_ns in known:
        try:
            info = os.stat(path)
        except OSError:
            return path
        if info.st_size != size or info.st_mtime_ns != mtime_ns:
            return path
    return None
