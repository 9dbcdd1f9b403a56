"""Portal sandbox: a real HTTP server that behaves like the tenant portal (casavi manager API v2).

``create_app`` builds the FastAPI app; ``python -m sandbox.portal`` runs it; ``SandboxServer`` runs
it as a separate process for tests, benchmarks and the demo. The contract is docs/portal-api.md.
"""

from sandbox.portal.server import SandboxServer

__all__ = ["SandboxServer"]
