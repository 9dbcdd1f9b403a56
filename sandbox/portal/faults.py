"""Fault injection for the portal sandbox: error statuses, latency, dropped connections.

Why: a connector is only proven against the failures it will meet (429 with ``Retry-After``, 5xx,
timeouts, connections that die). Each fault is decided *before* the request is processed, so a
faulted request changes nothing; the one exception is ``apply_then_drop_rate``: the write is applied
and then the connection is closed without an answer, as when a partner commits but its answer is
lost. A seeded RNG makes a run reproducible (for the same order of arrival).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

FAULT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Statuses ``status_rates`` may inject."""

WRITE_METHODS = frozenset({"PUT", "POST", "DELETE"})


class FaultConfig(BaseModel):
    """Body of ``POST /_sandbox/faults``; every fault is off by default.

    The rates of ``status_rates``, ``drop_rate`` and ``apply_then_drop_rate`` are probabilities per
    request and may add up to at most 1.
    """

    model_config = ConfigDict(extra="forbid")

    status_rates: dict[int, float] = Field(
        default_factory=dict,
        description="status -> probability, e.g. {'500': 0.1, '429': 0.05}; 408, 429, 500, 502, 503, 504",
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After of injected 429 and 503 answers")
    latency_ms: tuple[int, int] | None = Field(
        default=None, description="[min, max] extra latency per request, uniform"
    )
    drop_rate: float = Field(
        default=0.0, ge=0, le=1, description="close the connection without an answer, before processing"
    )
    apply_then_drop_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="writes only: apply the write, then close the connection without an answer",
    )
    fail_after_writes: int | None = Field(
        default=None, ge=0, description="after N successful writes every write answers 503 until cleared"
    )
    methods: list[str] | None = Field(
        default=None, description="restrict faults to these HTTP methods (e.g. ['PUT', 'POST']); all if null"
    )
    seed: int = Field(default=0, description="seed of the fault RNG")

    @model_validator(mode="after")
    def _check(self) -> FaultConfig:
        """Reject statuses that are not faults and rates that cannot be probabilities."""
        for status, rate in self.status_rates.items():
            if status not in FAULT_STATUSES:
                raise ValueError(f"status {status} cannot be injected; use one of {sorted(FAULT_STATUSES)}")
            if not 0 <= rate <= 1:
                raise ValueError(f"rate of {status} must be between 0 and 1, not {rate}")
        total = sum(self.status_rates.values()) + self.drop_rate + self.apply_then_drop_rate
        if total > 1 + 1e-9:
            raise ValueError(f"the fault rates add up to {total:.3f}, more than 1")
        if self.latency_ms is not None and not 0 <= self.latency_ms[0] <= self.latency_ms[1]:
            raise ValueError("latency_ms must be [min, max] with 0 <= min <= max")
        if self.methods is not None:
            self.methods = [m.upper() for m in self.methods]
        return self


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one request: ``kind`` is ``None`` (serve), a status string, ``drop`` or
    ``apply_then_drop``; ``delay_s`` is extra latency before anything else."""

    kind: str | None
    delay_s: float = 0.0


@dataclass
class FaultInjector:
    """Holds the active ``FaultConfig`` and decides each request's fate.

    ``fail_after_writes`` counts writes answered with 2xx since the faults were set.
    """

    config: FaultConfig = field(default_factory=FaultConfig)
    injected: dict[str, int] = field(default_factory=dict)
    writes_since_set: int = 0
    _rng: random.Random = field(default_factory=lambda: random.Random(0))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _active: bool = False

    def set(self, config: FaultConfig) -> None:
        """Replace the active faults (and restart the RNG and the write count)."""
        with self._lock:
            self.config = config
            self._rng = random.Random(config.seed)
            self.writes_since_set = 0
            self._active = bool(
                config.status_rates
                or config.latency_ms
                or config.drop_rate
                or config.apply_then_drop_rate
                or config.fail_after_writes is not None
            )

    def clear(self) -> None:
        """No faults any more (the count of injected faults stays until a reset)."""
        self.set(FaultConfig())

    def reset_counts(self) -> None:
        """Forget how many faults were injected."""
        with self._lock:
            self.injected = {}

    @property
    def active(self) -> bool:
        """Whether any fault is configured (the fast path skips everything when not)."""
        return self._active

    @property
    def tracks_writes(self) -> bool:
        """Whether successful writes must be counted (``fail_after_writes`` is set)."""
        return self.config.fail_after_writes is not None

    def decide(self, method: str) -> Decision:
        """Draw the fate of one request to ``/v2`` (not ``authenticate``)."""
        config = self.config
        if config.methods is not None and method not in config.methods:
            return Decision(None)
        is_write = method in WRITE_METHODS
        with self._lock:
            delay = 0.0
            if config.latency_ms is not None:
                delay = self._rng.uniform(config.latency_ms[0], config.latency_ms[1]) / 1000
            if (
                is_write
                and config.fail_after_writes is not None
                and self.writes_since_set >= config.fail_after_writes
            ):
                return self._count(Decision("fail_after_writes", delay))
            draw = self._rng.random()
            edge = config.drop_rate
            if draw < edge:
                return self._count(Decision("drop", delay))
            for status, rate in sorted(config.status_rates.items()):
                edge += rate
                if draw < edge:
                    return self._count(Decision(str(status), delay))
            edge += config.apply_then_drop_rate
            if is_write and draw < edge:
                return self._count(Decision("apply_then_drop", delay))
        return Decision(None, delay)

    def _count(self, decision: Decision) -> Decision:
        assert decision.kind is not None
        self.injected[decision.kind] = self.injected.get(decision.kind, 0) + 1
        return decision

    def write_succeeded(self) -> None:
        """Count one write answered with 2xx (for ``fail_after_writes``)."""
        with self._lock:
            self.writes_since_set += 1
