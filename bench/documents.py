"""Benchmark of a document's file upload to the portal (default 100 MB); prints one JSON line last.

Measures, in one run against the sandbox started as its own process:
- hausflow's path: ``PortalClient(...).write_many([WriteOp("documents", "upsert", id, payload)])``
  with a new ``version`` and ``_content: {path, mimeType, sha256}`` as the sync's plan makes it
  (the plan reads each file's SHA-256 through its digest cache to tell a changed file; the
  child reads it before the clock starts, as the plan's task does before the load), so the
  client writes the metadata, sees the content missing and streams the file as
  ``PUT /v2/documents/{id}/content`` (``stream_file``) with that digest;
- the raw baseline: a plain ``httpx.AsyncClient`` PUT of the same file to the same endpoint, the
  body an async generator of 256 KiB chunks, the same headers (``Content-Type``, a correct
  ``Content-Digest`` computed before the clock starts): the transfer alone, no metadata write.

Each measurement runs in a fresh child process (``--child``) that does its imports and its login
(hausflow: one authenticated read, ``PortalClient.check``; a sync logs in once per run) before
the clock starts; a thread samples the child's own resident memory
(RSS, psutil) every 2 ms. ``peak_rss_growth_mb`` is the largest RSS seen while uploading minus the
RSS just before. MB/s is the file's size over the wall time of the upload (MB = 2**20 bytes).
Each is measured ``--repeat`` times (default 3), hausflow and raw alternating; the median is
reported with the range.

Targets: peak RSS growth <= 20 MB; upload >= 80 % of the raw upload's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHUNK = 256 * 1024
DOC_ID = "BENCH-doc"
PROPERTY_ID = "BENCH"


class RssSampler:
    """The process's RSS, sampled in a thread every ``interval_s`` while active."""

    def __init__(self, interval_s: float = 0.002) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.before = self._proc.memory_info().rss
        self.peak = self.before
        self.samples = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self.samples += 1
            time.sleep(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def document_payload(path: Path, version: str) -> dict[str, Any]:
    return {
        "id": DOC_ID,
        "title": "Benchmark",
        "documentType": "BENCH",
        "fileName": path.name,
        "mimeType": "application/pdf",
        "date": "2026-11-21",
        "propertyId": PROPERTY_ID,
        "version": version,
        "size": path.stat().st_size,
    }


def child_hausflow(base_url: str, key: str, secret: str, path: Path) -> dict[str, Any]:
    from connectors.documents import file_digest
    from connectors.portal.client import PortalClient
    from connectors.sync.client import WriteOp

    payload = {
        **document_payload(path, uuid.uuid4().hex),
        "_content": {"path": str(path), "mimeType": "application/pdf", "sha256": file_digest(path)},
    }
    client = PortalClient(base_url, key, secret)
    client.check()  # the run's login
    import gc

    gc.collect()
    with RssSampler() as rss:
        t = time.perf_counter()
        results = client.write_many([WriteOp("documents", "upsert", DOC_ID, payload)])
        seconds = time.perf_counter() - t
    if not results[0].ok:
        raise SystemExit(f"hausflow upload failed: {results[0].error}")
    return {"seconds": seconds, "rss_before": rss.before, "rss_peak": rss.peak, "samples": rss.samples}


def child_raw(base_url: str, key: str, secret: str, path: Path, digest_header: str) -> dict[str, Any]:
    import gc

    import httpx

    async def body() -> Any:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    async def run() -> tuple[float, RssSampler]:
        async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(300.0)) as client:
            token = (await client.post("/v2/authenticate", json={"key": key, "secret": secret})).json()[
                "token"
            ]
            gc.collect()
            with RssSampler() as rss:
                t = time.perf_counter()
                r = await client.put(
                    f"/v2/documents/{DOC_ID}/content",
                    content=body(),
                    headers={
                        "token": token,
                        "Content-Type": "application/pdf",
                        "Content-Digest": digest_header,
                    },
                )
                seconds = time.perf_counter() - t
            if r.status_code >= 400:
                raise SystemExit(f"raw upload failed: {r.status_code} {r.text[:200]}")
            return seconds, rss

    seconds, rss = asyncio.run(run())
    return {"seconds": seconds, "rss_before": rss.before, "rss_peak": rss.peak, "samples": rss.samples}


def spawn(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def make_file(path: Path, mb: int) -> None:
    with open(path, "wb") as f:
        f.write(b"%PDF-1.7\n")
        left = mb * 1024 * 1024 - 9 - 6
        while left > 0:
            n = min(left, 4 * 1024 * 1024)
            f.write(os.urandom(n))
            left -= n
        f.write(b"%%EOF\n")


def span(values: list[float], digits: int = 1) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": [round(v, digits) for v in values],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=100, help="size of the file in MB (2**20 bytes)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, base_url, key, secret, path = args.child[:5]
        if kind == "hausflow":
            result = child_hausflow(base_url, key, secret, Path(path))
        else:
            result = child_raw(base_url, key, secret, Path(path), args.child[5])
        print(json.dumps(result))
        return

    import httpx

    from connectors.documents import content_digest_header, file_digest
    from sandbox.portal.server import SandboxServer

    work = Path(tempfile.mkdtemp(prefix="hausflow-bench-docs-"))
    path = work / "bench.pdf"
    make_file(path, args.mb)
    size = path.stat().st_size
    size_mb = size / 2**20
    t = time.perf_counter()
    digest = file_digest(path)
    digest_s = time.perf_counter() - t
    header = content_digest_header(digest)
    print(f"{size_mb:.0f} MB file written; its SHA-256 alone took {digest_s:.2f} s", flush=True)

    sandbox = SandboxServer(db_url=f"sqlite:///{work}/portal.sqlite", max_upload_bytes=size + 2**20)
    sandbox.start()
    try:
        with httpx.Client(base_url=sandbox.base_url, timeout=30.0) as api:
            token = api.post("/v2/authenticate", json={"key": sandbox.key, "secret": sandbox.secret}).json()[
                "token"
            ]
            h = {"token": token}
            prop = {
                "name": "Benchmark", "number": "1", "postalCode": "10115", "city": "Berlin", "country": "DE",
                "addresses": [{"street": "Lindenstr. 5", "units": []}], "customFields": {},
            }  # fmt: skip
            api.put(f"/v2/properties/{PROPERTY_ID}", json=prop, headers=h).raise_for_status()
            api.put(
                f"/v2/documents/{DOC_ID}", json=document_payload(path, "initial"), headers=h
            ).raise_for_status()

        common = [sandbox.base_url, sandbox.key, sandbox.secret, str(path)]
        ours: list[dict[str, Any]] = []
        raw: list[dict[str, Any]] = []
        for i in range(args.repeat):
            ours.append(spawn(["hausflow", *common]))
            o = ours[-1]
            print(
                f"hausflow {i + 1}: {size_mb / o['seconds']:.0f} MB/s ({o['seconds']:.2f} s), "
                f"RSS +{(o['rss_peak'] - o['rss_before']) / 2**20:.1f} MB ({o['samples']} samples)",
                flush=True,
            )
            raw.append(spawn(["raw", *common, header]))
            r = raw[-1]
            print(
                f"raw httpx {i + 1}: {size_mb / r['seconds']:.0f} MB/s ({r['seconds']:.2f} s), "
                f"RSS +{(r['rss_peak'] - r['rss_before']) / 2**20:.1f} MB",
                flush=True,
            )
        counters = sandbox.counters()
        with httpx.Client(base_url=sandbox.base_url, timeout=30.0) as api:
            token = api.post("/v2/authenticate", json={"key": sandbox.key, "secret": sandbox.secret}).json()[
                "token"
            ]
            stored = api.get(f"/v2/documents/{DOC_ID}", headers={"token": token}).json()
    finally:
        sandbox.stop()
    if stored.get("contentSha256") != digest:
        raise SystemExit("the sandbox does not hold the file's digest after the uploads")

    ours_rate = [size_mb / o["seconds"] for o in ours]
    raw_rate = [size_mb / r["seconds"] for r in raw]
    ours_growth = [(o["rss_peak"] - o["rss_before"]) / 2**20 for o in ours]
    raw_growth = [(r["rss_peak"] - r["rss_before"]) / 2**20 for r in raw]
    rate, raw_med, growth = (
        statistics.median(ours_rate),
        statistics.median(raw_rate),
        statistics.median(ours_growth),
    )
    result = {
        "file_mb": round(size_mb, 1),
        "repeat": args.repeat,
        "peak_rss_growth_mb": round(growth, 1),
        "peak_rss_growth_mb_range": span(ours_growth),
        "upload_mb_per_s": round(rate, 1),
        "upload_mb_per_s_range": span(ours_rate),
        "upload_s": span([o["seconds"] for o in ours], 2),
        "raw_upload_mb_per_s": round(raw_med, 1),
        "raw_upload_mb_per_s_range": span(raw_rate),
        "raw_upload_s": span([r["seconds"] for r in raw], 2),
        "raw_peak_rss_growth_mb": round(statistics.median(raw_growth), 1),
        "upload_vs_raw": round(rate / raw_med, 3),
        "digest_alone_s": round(digest_s, 2),
        "sandbox_uploads": counters.get("uploads"),
        "sandbox_upload_bytes": counters.get("upload_bytes"),
        "targets_met": {
            "rss_growth_le_20mb": max(ours_growth) <= 20.0,
            "upload_ge_80pct_raw": rate >= 0.8 * raw_med,
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
