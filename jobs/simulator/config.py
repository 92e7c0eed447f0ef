"""The simulator's settings: one dataclass, its command-line flags, and run-time updates."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, fields

# Fields that only make sense before the socket is bound.
STARTUP_ONLY_FIELDS = frozenset({"host", "port"})
FAULT_RATE_FIELDS = (
    "rate_429",
    "rate_500",
    "rate_503",
    "rate_reset",
    "rate_malformed",
    "rate_hang",
)


@dataclass(frozen=True)
class SimConfig:
    """How the simulated upstream behaves; every field is also a `--flag`."""

    host: str = "127.0.0.1"
    port: int = 0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    seed: int = 0
    require_key: str | None = None
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_reset: float = 0.0
    rate_malformed: float = 0.0
    rate_hang: float = 0.0
    retry_after_s: float = 1.0
    hang_s: float = 3600.0
    # A 429 storm: every request answers 429 for this long after start or configure().
    rate_limit_for_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("latency_ms", "jitter_ms", "retry_after_s", "hang_s", "rate_limit_for_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        for name in FAULT_RATE_FIELDS:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        # One uniform draw picks at most one fault, so the rates share a single unit interval.
        if self.fault_rate_total > 1.0 + 1e-9:
            raise ValueError("the fault rates must add up to at most 1")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, not {self.port}")

    @property
    def fault_rate_total(self) -> float:
        return sum(getattr(self, name) for name in FAULT_RATE_FIELDS)

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def updated(self, changes: dict[str, object]) -> SimConfig:
        """A copy with `changes` applied; raises ValueError naming any bad field."""
        types = _field_types()
        coerced: dict[str, object] = {}
        for name, value in changes.items():
            if name not in types:
                raise ValueError(f"unknown field {name!r}; known: {', '.join(sorted(types))}")
            if name in STARTUP_ONLY_FIELDS:
                raise ValueError(f"{name} cannot change at run time")
            if not _has_type(value, types[name]):
                raise ValueError(f"{name} must be {types[name]}, not {value!r}")
            if types[name] == "float" and isinstance(value, int):
                value = float(value)
            coerced[name] = value
        return dataclasses.replace(self, **coerced)  # type: ignore[arg-type]


def _field_types() -> dict[str, str]:
    # `from __future__ import annotations` leaves the annotations as strings.
    return {field.name: str(field.type) for field in fields(SimConfig)}


def _has_type(value: object, type_name: str) -> bool:
    if isinstance(value, bool):
        return False
    if type_name == "float":
        return isinstance(value, int | float)
    if type_name == "int":
        return isinstance(value, int)
    if type_name == "str | None":
        return value is None or isinstance(value, str)
    return isinstance(value, str)


_HELP = {
    "host": "address to bind (default %(default)s)",
    "port": "port to bind; 0 picks a free one (default %(default)s)",
    "latency_ms": "latency of every answer (default %(default)s)",
    "jitter_ms": "extra latency drawn uniformly from [0, JITTER_MS] (default %(default)s)",
    "seed": "seed of the random latency and faults (default %(default)s)",
    "require_key": "answer 401 unless 'Authorization: Bearer KEY' is sent",
    "rate_429": "share of requests answered 429 (default %(default)s)",
    "rate_500": "share of requests answered 500 (default %(default)s)",
    "rate_503": "share of requests answered 503 (default %(default)s)",
    "rate_reset": "share of connections dropped without an answer (default %(default)s)",
    "rate_malformed": "share of 200s with a truncated body (default %(default)s)",
    "rate_hang": "share of requests held for HANG_S first (default %(default)s)",
    "retry_after_s": "Retry-After sent with every 429 (default %(default)s)",
    "hang_s": "how long a hung request is held (default %(default)s)",
    "rate_limit_for_s": "answer every request 429 for this long after start (default 0)",
}


def flag_for(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.simulator",
        description="A simulated OpenAI-compatible upstream for promptq's tests and benchmarks.",
    )
    defaults = SimConfig()
    converters = {"float": float, "int": int, "str": str, "str | None": str}
    for name, type_name in _field_types().items():
        parser.add_argument(
            flag_for(name),
            dest=name,
            type=converters[type_name],
            default=getattr(defaults, name),
            metavar=name.upper(),
            help=_HELP[name],
        )
    return parser


def config_from_argv(argv: list[str] | None) -> SimConfig:
    parser = build_parser()
    namespace = parser.parse_args(argv)
    try:
        return SimConfig(**vars(namespace))
    except ValueError as error:
        parser.error(str(error))
        raise  # parser.error exits; this keeps type checkers satisfied


def argv_from_fields(options: dict[str, object]) -> list[str]:
    """The command-line flags that reproduce `options` (SimConfig field names)."""
    config = SimConfig(**options)  # type: ignore[arg-type]  # validates names and values
    argv: list[str] = []
    for name in options:
        value = getattr(config, name)
        if value is not None:
            argv += [flag_for(name), str(value)]
    return argv
