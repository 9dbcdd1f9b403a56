"""The rent-deposit partner's sandbox: a real HTTP server (FastAPI + uvicorn) speaking the contract
of ``docs/deposit-api.md``, with its own SQLite state, fault injection and write counters."""
