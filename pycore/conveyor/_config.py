"""The engine's settings, read from ``CONVEYOR_*`` environment variables."""

from __future__ import annotations

import math
import operator
import os
from typing import TYPE_CHECKING, Callable, SupportsIndex, TypeVar

if TYPE_CHECKING:
    from ._native import core

__all__ = [
    "engine_options",
    "env_number",
    "heartbeat_seconds",
    "slow_handler_seconds",
    "zero_copy_threshold",
]

Number = TypeVar("Number", int, float)


def env_number(name: str, default: Number, kind: Callable[[str], Number] = int) -> Number:
    """Return the finite number in environment variable `name` (>= 0), or `default` if unset."""
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a valid {kind.__name__}") from None
    if not math.isfinite(value):  # an idle wait's sleep of nan µs would never sleep
        raise ValueError(f"{name}={text!r} is not a finite number")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, not {value}")
    return value


def zero_copy_threshold(value: SupportsIndex | None = None) -> int:
    """The smallest array or byte string that travels zero-copy (argument, else environment)."""
    if value is None:
        value = env_number("CONVEYOR_ZERO_COPY_THRESHOLD", 16384)
    value = operator.index(value)
    if value < 0:
        raise ValueError("zero_copy_threshold must be >= 0")
    return value


def slow_handler_seconds() -> float:
    """From how many seconds a handler is logged as slow (``CONVEYOR_SLOW_HANDLER_S``).

    Unset, empty or 0: never (infinity).
    """
    seconds = env_number("CONVEYOR_SLOW_HANDLER_S", 0.0, float)
    return seconds if seconds > 0 else math.inf


def heartbeat_seconds() -> float:
    """After how many silent seconds a fault-tolerant messenger declares a rank failed.

    ``CONVEYOR_HEARTBEAT_S``, 5 by default; ranks send a heartbeat four
    times as often.
    """
    seconds = env_number("CONVEYOR_HEARTBEAT_S", 5.0, float)
    if not seconds > 0 or seconds == math.inf:
        raise ValueError(
            f"CONVEYOR_HEARTBEAT_S must be a positive number of seconds, not {seconds}"
        )
    return seconds


def _microseconds(name: str, default: float) -> float:
    return env_number(name, default, float) * 1e-6


def engine_options(crowded: bool = False) -> core.engine.EngineOptions:
    """Return the `EngineOptions` the environment asks for (and size the buffer cache).

    An idle wait spins 50 µs before it yields its core, unless `crowded`
    (see `_hosts.survey`): a spinning rank would then keep the core the rank
    it waits for needs (2 ranks on one core: a request's one-way latency of
    61 µs with the spin, 10 µs without). ``CONVEYOR_SPIN_US`` sets it in
    either case.
    """
    # Imported here: reading the other settings (the item store's, the
    # command line's) must not initialise MPI, which importing the core does.
    from ._native import core

    options = core.engine.EngineOptions()
    options.max_frame_bytes = env_number("CONVEYOR_MAX_FRAME_BYTES", options.max_frame_bytes)
    options.piece_bytes = env_number("CONVEYOR_PIECE_BYTES", options.piece_bytes)
    options.spin_seconds = _microseconds("CONVEYOR_SPIN_US", 0 if crowded else 50)
    options.max_sleep_seconds = _microseconds("CONVEYOR_MAX_SLEEP_US", 500)
    options.batch_bytes = env_number("CONVEYOR_BATCH_BYTES", options.batch_bytes)
    options.flush_delay_seconds = _microseconds("CONVEYOR_FLUSH_DELAY_US", 100)
    options.background_max_sleep_seconds = _microseconds("CONVEYOR_BACKGROUND_MAX_SLEEP_US", 32000)
    options.window_bytes = env_number("CONVEYOR_WINDOW_BYTES", options.window_bytes)
    options.data_window_bytes = env_number("CONVEYOR_DATA_WINDOW_BYTES", options.data_window_bytes)
    options.window_pool_bytes = env_number("CONVEYOR_WINDOW_POOL_BYTES", options.window_pool_bytes)
    options.data_window_pool_bytes = env_number(
        "CONVEYOR_DATA_WINDOW_POOL_BYTES", options.data_window_pool_bytes
    )
    options.relay_pool_bytes = env_number("CONVEYOR_RELAY_POOL_BYTES", options.relay_pool_bytes)
    options.batch_pool_bytes = env_number("CONVEYOR_BATCH_POOL_BYTES", options.batch_pool_bytes)
    options.background = bool(env_number("CONVEYOR_BACKGROUND", 1))
    core.engine.set_buffer_cache_limit(env_number("CONVEYOR_BUFFER_CACHE_BYTES", 512 << 20))
    return options
