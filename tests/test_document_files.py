"""Documents on disk: digests and their cache, file types, PDF conversion with LibreOffice, streaming."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from connectors.documents import (
    DigestCache,
    content_digest_header,
    convert_to_pdf,
    file_digest,
    first_changed_file,
    mime_type,
    needs_conversion,
    stream_file,
)

DATA = Path(__file__).parent / "data" / "documents"
SOFFICE = shutil.which("soffice")
if SOFFICE is None and os.environ.get("HAUSFLOW_REQUIRE_LIBREOFFICE"):
    raise RuntimeError("HAUSFLOW_REQUIRE_LIBREOFFICE is set but LibreOffice (soffice) is not installed")
needs_soffice = pytest.mark.skipif(
    SOFFICE is None, reason="LibreOffice (soffice) is not installed: apt-get install libreoffice-writer-nogui"
)


def write(path: Path, data: bytes, age_s: float = 60) -> Path:
    """Write ``data`` and date the file ``age_s`` back (older than the cache's racy window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    past = time.time() - age_s
    os.utime(path, (past, past))
    return path


def pages(pdf: Path) -> int:
    """The page count LibreOffice writes into the page tree (its PDFs keep it uncompressed)."""
    return max(int(n) for n in re.findall(rb"/Count\s+(\d+)", pdf.read_bytes()))


def is_pdf(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(b"%PDF-") and b"%%EOF" in data[-1024:]


# ---- digests --------------------------------------------------------------------------------------
def test_file_digest_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 12345)  # spans three 1 MB chunks
    assert file_digest(write(tmp_path / "scan.pdf", data)) == hashlib.sha256(data).hexdigest()
    assert file_digest(write(tmp_path / "empty.pdf", b"")) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(OSError):
        file_digest(tmp_path / "missing.pdf")


def test_digest_cache_reads_a_file_only_when_size_or_mtime_changed(tmp_path: Path) -> None:
    path = write(tmp_path / "Mietvertrag.pdf", b"%PDF-1 first version")
    cache = DigestCache()
    first = cache.digest(path)
    assert cache.digest(path) == first and cache.reads == 1

    # persisted as JSON and loaded again: still no read
    restored = DigestCache.from_dict(json.loads(json.dumps(cache.to_dict())))
    assert restored.digest(path) == first and restored.reads == 0

    # same size, new content, new mtime: read again
    write(path, b"%PDF-1 other version", age_s=30)
    second = restored.digest(path)
    assert second == hashlib.sha256(b"%PDF-1 other version").hexdigest() != first
    assert restored.reads == 1

    # only the mtime changed: read again, same digest
    os.utime(path, (time.time() - 10, time.time() - 10))
    assert restored.digest(path) == second and restored.reads == 2

    # a different size: read again
    write(path, b"%PDF-1 a longer third version", age_s=60)
    assert restored.digest(path) == hashlib.sha256(b"%PDF-1 a longer third version").hexdigest()
    assert restored.reads == 3


def test_digest_cache_does_not_trust_a_file_changed_just_now(tmp_path: Path) -> None:
    path = tmp_path / "fresh.pdf"
    path.write_bytes(b"being written")
    cache = DigestCache()
    cache.digest(path)
    cache.digest(path)
    assert cache.reads == 2 and cache.to_dict() == {}
    assert cache.unsettled == 2  # the run that read it cannot vouch for it by its stat


def test_first_changed_file_is_found_by_stat(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pdf", tmp_path / "b.pdf"
    write(a, b"%PDF-1 a", age_s=60)
    write(b, b"%PDF-1 b", age_s=60)
    cache = DigestCache()
    cache.digest(a)
    cache.digest(b)
    known = [(path, size, mtime_ns) for path, (size, mtime_ns, _) in cache.to_dict().items()]
    assert cache.unsettled == 0 and first_changed_file(known) is None

    write(b, b"%PDF-1 B", age_s=30)  # same size, another modification time
    assert first_changed_file(known) == str(b)
    b.write_bytes(b"%PDF-1 b")
    os.utime(b, ns=(known[1][2], known[1][2]))  # back as it was read
    assert first_changed_file(known) is None
    a.unlink()
    assert first_changed_file(known) == str(a)


def test_digest_cache_drops_malformed_entries_and_unused_ones(tmp_path: Path) -> None:
    kept = write(tmp_path / "a.pdf", b"a")
    stat = kept.stat()
    good = [stat.st_size, stat.st_mtime_ns, hashlib.sha256(b"a").hexdigest()]
    cache = DigestCache.from_dict(
        {
            str(kept): good,
            str(tmp_path / "b.pdf"): [1, 2, "not a digest"],
            str(tmp_path / "c.pdf"): "garbage",
            str(tmp_path / "gone.pdf"): [1, 2, "0" * 64],
        }
    )
    assert set(cache.to_dict()) == {str(kept), str(tmp_path / "gone.pdf")}
    assert cache.digest(kept) == good[2] and cache.reads == 0
    assert cache.to_dict(only_used=True) == {str(kept): good}
    assert cache.changed() == {} and cache.gone() == [str(tmp_path / "gone.pdf")]


def test_digest_cache_tells_what_to_save_and_what_to_forget(tmp_path: Path) -> None:
    old = write(tmp_path / "old.pdf", b"old")
    new = write(tmp_path / "new.pdf", b"new")
    first = DigestCache()
    first.digest(old)
    # the store keeps (size, mtime_ns, digest) tuples: loaded as they come
    loaded = {k: tuple(v) for k, v in first.to_dict().items()}
    cache = DigestCache(loaded)
    cache.digest(new)
    assert cache.changed() == {str(new): (3, new.stat().st_mtime_ns, hashlib.sha256(b"new").hexdigest())}
    assert cache.gone() == [str(old)]
    # a file rewritten just now is no longer trusted: forgotten, not saved
    write(new, b"newer", age_s=0)
    cache.digest(new)
    assert cache.changed() == {} and cache.gone() == [str(new), str(old)]


# ---- file types ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "convert", "mime"),
    [
        ("Mietvertrag.pdf", False, "application/pdf"),
        ("SCAN.PDF", False, "application/pdf"),
        ("foto.jpg", False, "image/jpeg"),
        ("foto.JPEG", False, "image/jpeg"),
        ("grundriss.png", False, "image/png"),
        ("brief.doc", True, None),
        ("brief.DOCX", True, None),
        ("protokoll.odt", True, None),
        ("alt.rtf", True, None),
        ("tabelle.xlsx", False, None),
        ("ohne_endung", False, None),
        ("archiv.pdf.zip", False, None),
    ],
)
def test_file_types(name: str, convert: bool, mime: str | None) -> None:
    assert needs_conversion(name) is convert
    assert mime_type(name) == mime


# ---- conversion ---------------------------------------------------------------------------------------
def counting_program(tmp_path: Path, real: str) -> tuple[str, Path]:
    """A wrapper around ``real`` that logs each call: the seam to count LibreOffice calls."""
    log = tmp_path / "calls.log"
    wrapper = tmp_path / "soffice-counting"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper), log


@needs_soffice
def test_docx_and_odt_become_one_page_pdfs_in_one_call(tmp_path: Path) -> None:
    assert SOFFICE is not None
    program, log = counting_program(tmp_path, SOFFICE)
    sources = [DATA / "Mietvertrag.docx", DATA / "Mietvertrag.odt", DATA / "Mietvertrag.rtf"]
    out = tmp_path / "pdf"
    result = convert_to_pdf(sources, out, program=program)

    assert list(result) == sources
    pdfs = [result[s] for s in sources]
    assert all(isinstance(p, Path) for p in pdfs)
    assert len({p for p in pdfs}) == 3  # the same stem three times: nothing overwritten
    for pdf in pdfs:
        assert isinstance(pdf, Path) and pdf.name == "Mietvertrag.pdf" and pdf.is_relative_to(out)
        assert is_pdf(pdf) and pages(pdf) == 1
    assert len(log.read_text().splitlines()) == 1
    assert "-env:UserInstallation=file:///" in log.read_text()
    assert not list(tmp_path.glob("**/hausflow-convert-*"))  # the scratch folder is gone


@needs_soffice
def test_a_batch_converts_in_one_call_and_a_broken_file_fails_alone(tmp_path: Path) -> None:
    assert SOFFICE is not None
    program, log = counting_program(tmp_path, SOFFICE)
    docx = (DATA / "Mietvertrag.docx").read_bytes()
    sources = [write(tmp_path / "src" / f"Brief {n} – Müller.docx", docx) for n in range(5)]
    broken = write(tmp_path / "src" / "kaputt.docx", docx[: len(docx) // 2])  # a truncated zip
    empty = write(tmp_path / "src" / "leer.odt", b"")
    missing = tmp_path / "src" / "fehlt.docx"
    result = convert_to_pdf([*sources, broken, empty, missing], tmp_path / "pdf", program=program)

    for source in sources:
        pdf = result[source]
        assert isinstance(pdf, Path) and is_pdf(pdf) and pdf.name == f"{source.stem}.pdf"
    assert isinstance(result[broken], str) and "produced no PDF" in result[broken]
    assert "not sent unconverted" in result[broken]
    assert result[empty] == "the file is empty"
    assert isinstance(result[missing], str) and "cannot be read" in result[missing]
    assert len(log.read_text().splitlines()) == 1


@needs_soffice
def test_two_conversions_at_once_do_not_collide(tmp_path: Path) -> None:
    sources = [DATA / "Mietvertrag.docx", DATA / "Mietvertrag.odt"]
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda n: convert_to_pdf(sources, tmp_path / f"out{n}"), range(2)))
    for run in runs:
        assert all(isinstance(pdf, Path) and is_pdf(pdf) for pdf in run.values())


def test_missing_program_gives_the_reason_for_every_file(tmp_path: Path) -> None:
    sources = [DATA / "Mietvertrag.docx", DATA / "Mietvertrag.odt"]
    result = convert_to_pdf(sources, tmp_path / "pdf", program="soffice-not-installed-here")
    assert result == dict.fromkeys(
        sources,
        "LibreOffice (soffice-not-installed-here) is not installed: install libreoffice-writer-nogui; "
        "the document is not sent unconverted",
    )


def test_the_reason_names_soffice_when_it_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no soffice on this PATH
    result = convert_to_pdf([DATA / "Mietvertrag.docx"], tmp_path / "pdf")
    assert result[DATA / "Mietvertrag.docx"] == (
        "LibreOffice (soffice) is not installed: install libreoffice-writer-nogui; "
        "the document is not sent unconverted"
    )


FAKE_CONVERTER = """#!{python}
# converts in order like LibreOffice; hangs on a document that says HANG
import sys, time, pathlib
args = sys.argv[1:]
out = pathlib.Path(args[args.index("--outdir") + 1])
with open({log!r}, "a") as log:
    log.write(" ".join(args) + "\\n")
for name in args[args.index("--outdir") + 2:]:
    source = pathlib.Path(name)
    if b"HANG" in source.read_bytes():
        (out / (source.stem + ".pdf")).write_bytes(b"%PDF-1.4 half written")
        time.sleep(60)
    (out / (source.stem + ".pdf")).write_bytes(b"%PDF-1.4 fake page\\n%%EOF\\n")
"""


def test_a_hanging_document_times_out_alone(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    program = tmp_path / "fake-soffice"
    program.write_text(FAKE_CONVERTER.format(python=sys.executable, log=str(log)))
    program.chmod(0o755)
    first = write(tmp_path / "a.docx", b"fine")
    hangs = write(tmp_path / "b.docx", b"HANG")
    last = write(tmp_path / "c.docx", b"fine too")
    started = time.monotonic()
    result = convert_to_pdf([first, hangs, last], tmp_path / "pdf", program=str(program), timeout_s=1.5)

    assert time.monotonic() - started < 10
    assert isinstance(result[first], Path) and isinstance(result[last], Path)
    assert isinstance(result[hangs], str) and "within 1.5 s" in result[hangs]
    assert len(log.read_text().splitlines()) == 2  # the rest got a call of its own


# ---- streaming ------------------------------------------------------------------------------------------
def test_stream_file_yields_the_exact_bytes_in_little_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.pdf"
    with path.open("wb") as f:
        for _ in range(20):
            f.write(os.urandom(1024 * 1024))
    expected = file_digest(path)

    async def consume() -> tuple[str, int, int]:
        digest, size, chunks = hashlib.sha256(), 0, 0
        async for chunk in stream_file(path):
            digest.update(chunk)
            size += len(chunk)
            chunks += 1
        return digest.hexdigest(), size, chunks

    tracemalloc.start()
    try:
        got, size, chunks = asyncio.run(consume())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (got, size, chunks) == (expected, 20 * 1024 * 1024, 20)  # 1 MB chunks
    assert peak < 3 * 1024 * 1024, f"peak {peak} bytes for a 20 MB file"


def test_stream_file_of_a_missing_file_raises(tmp_path: Path) -> None:
    async def consume() -> None:
        async for _ in stream_file(tmp_path / "missing.pdf"):
            pass

    with pytest.raises(FileNotFoundError):
        asyncio.run(consume())


def test_content_digest_header() -> None:
    empty = hashlib.sha256(b"").hexdigest()
    assert content_digest_header(empty) == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    data = b"%PDF-1.7 Mietvertrag"
    value = content_digest_header(hashlib.sha256(data).hexdigest())
    assert (
        base64.b64decode(value.removeprefix("sha-256=:").removesuffix(":")) == hashlib.sha256(data).digest()
    )
