"""Waves: how many tenants each deploy call takes, and whether the plan fits in ``timeout``.

A CP answers a call only after its slowest tenant, and calls follow one another, so a fleet's
rollout takes about ``calls × (cp-tenant-timeout + cp-settle-seconds)`` at worst: with a fixed
``batch-size`` of 3, a thousand tenants are 333 calls, far past any job's time limit, while a
larger fixed size makes the first step after the canary as big as every other. So ``batch-size``
is a growth list, as Argo Rollouts and Flagger grow exposure step by step:

- ``1,5,10%,25%``: the sizes of the successive calls after the canary, each a count of tenants or
  a percentage of the whole fleet (rounded up, at least 1); the last size repeats until the fleet
  is done, and the last call takes what is left. One number is a fixed size, as before.
- ``max-batch-size`` caps every call: the most tenants the CP accepts in one.

Every list that parses finishes: each size is at least one tenant, and the last one repeats. The
plan is stated before anything moves — its calls, their sizes and its worst-case time — and a
plan that cannot finish inside ``timeout`` is a configuration error that names sizes that would.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

MAX_SIZES = 32  # steps in a growth list: more is a typo, not a rollout
SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(%?)\Z")


@dataclass(frozen=True)
class BatchSize:
    """One step of ``batch-size``: a count of tenants, or a percentage of the whole fleet."""

    count: int = 0
    percent: float = 0.0

    def tenants(self, fleet: int) -> int:
        """How many tenants the step takes in a fleet of ``fleet``: a percentage rounded up, at least 1."""
        if not self.percent:
            return self.count
        return max(1, math.ceil(fleet * self.percent / 100 - 1e-9))

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent else str(self.count)


def parse_batch_sizes(text: str, maximum: int) -> tuple[BatchSize, ...]:
    """``3`` or ``1,5,10%,25%``, or :class:`ValueError` saying what to write instead."""
    parts = [part.strip() for part in text.split(",")]
    if not parts or any(not part for part in parts):
        raise ValueError("expected tenant counts or percentages of the fleet, comma-separated, such as 3 or "
                         "1,5,10%,25%")
    if len(parts) > MAX_SIZES:
        raise ValueError(f"at most {MAX_SIZES} sizes: the last one repeats until the fleet is done, so a long "
                         "list is never needed")
    return tuple(_parse_size(part, maximum) for part in parts)


def _parse_size(part: str, maximum: int) -> BatchSize:
    match = SIZE_RE.match(part)
    if part.startswith("-") and SIZE_RE.match(part[1:]):
        raise ValueError(f"{part!r}: a call takes at least 1 tenant, or more than 0% of the fleet")
    if not match or not part.isascii():
        raise ValueError(f"{part!r} is neither a count of tenants (5) nor a percentage of the fleet (10%)")
    number, percent = match.groups()
    if percent:
        value = float(number)
        if value <= 0:
            raise ValueError(f"{part!r}: a percentage must be more than 0% (each call takes at least one tenant)")
        if value > 100:
            raise ValueError(f"{part!r}: a percentage of the fleet must be at most 100%")
        return BatchSize(percent=value)
    if "." in number:
        raise ValueError(f"{part!r}: a count of tenants is a whole number (or write a percentage, such as 10%)")
    if len(number) > len(str(maximum)) or int(number) > maximum:
        raise ValueError(f"{part!r}: at most {maximum} tenants a call (use max-batch-size to cap it lower)")
    if int(number) == 0:
        raise ValueError(f"{part!r}: a call takes at least one tenant (0 would never finish)")
    return BatchSize(count=int(number))


def call_sizes(sizes: Sequence[BatchSize], fleet: int, tenants: int, cap: int = 0) -> list[int]:
    """The size of every call that deploys ``tenants`` tenants of a fleet of ``fleet``: the steps in
    order, the last repeated, each at most ``cap`` (0: no cap), the last call taking what is left."""
    result, left, step = [], tenants, 0
    while left > 0:
        size = sizes[min(step, len(sizes) - 1)].tenants(fleet)
        size = min(size, cap) if cap else size
        result.append(min(size, left))
        left -= result[-1]
        step += 1
    return result


def compressed(sizes: Sequence[int]) -> str:
    """``1, 10, 2500 × 3, 1388``: call sizes with runs of equal sizes counted, short at any length."""
    parts: list[str] = []
    run = 0
    for index, size in enumerate(sizes):
        run += 1
        if index + 1 == len(sizes) or sizes[index + 1] != size:
            parts.append(f"{size} × {run}" if run > 1 else str(size))
            run = 0
    return ", ".join(parts)


def split(slugs: Sequence[str], sizes: Sequence[int]) -> tuple[tuple[str, ...], ...]:
    """``slugs`` cut into consecutive calls of ``sizes``."""
    calls, start = [], 0
    for size in sizes:
        calls.append(tuple(slugs[start:start + size]))
        start += size
    return tuple(calls)


@dataclass(frozen=True, kw_only=True)
class Timing:
    """What a plan's worst case is made of: per deploy call, per batch, and once."""

    call: float  # cp-tenant-timeout + cp-settle-seconds
    bake: float  # batch-soak-seconds, after every batch
    soak: float  # the canary's soak (0 without a canary)
    kept: float  # the end of timeout kept for a rollback

    def worst(self, calls: int, canary: bool) -> float:
        """The worst-case wall time of ``calls`` deploy calls (the canary's among them)."""
        batches = calls - (1 if canary and calls else 0)
        return calls * self.call + batches * self.bake + (self.soak if canary and calls else 0.0) + self.kept

    def described(self, calls: int, canary: bool) -> str:
        batches = calls - (1 if canary and calls else 0)
        parts = [f"{calls} × {self.call:g} s (a call's worst case)"]
        parts += [f"{batches} × {self.bake:g} s (batch-soak-seconds)"] if self.bake and batches else []
        parts += [f"{self.soak:g} s (the canary's soak)"] if canary and self.soak and calls else []
        parts += [f"{self.kept:g} s kept for a rollback"] if self.kept else []
        return " + ".join(parts)


def fitting(sizes: Sequence[BatchSize], fleet: int, tenants: int, cap: int, timing: Timing, available: float,
            canary: bool, spent: float = 0.0) -> str:
    """A ``batch-size`` that would fit in ``available`` seconds, said as advice (or why none can).

    ``spent`` is what the run took before its plan (gates, enumeration, snapshot): a ``timeout``
    suggested must hold it again, with room, since the next run's reads take their own time."""
    batch_time = timing.call + timing.bake
    fixed = timing.kept + ((timing.call + timing.soak) if canary else 0.0)
    most = math.floor((available - fixed) / batch_time) if batch_time > 0 else tenants
    fewest = math.ceil(tenants / cap) if cap else 1
    if most < max(fewest, 1):
        needed = fixed + max(fewest, 1) * batch_time
        limit = f"max-batch-size {cap} makes at least {fewest} calls: " if cap and fewest > 1 else ""
        return f"no batch-size fits: {limit}batch-size: 100% needs timeout of at least {timeout_for(needed, spent)} s"
    if most == 1:
        return "batch-size: 100% (one call after the canary)" if canary else "batch-size: 100% (one call)"
    first = sizes[0].tenants(fleet)
    first = min(first, cap) if cap else first
    for percent in range(max(1, math.ceil(100 * (tenants - first) / fleet / (most - 1))), 101):
        trial = (BatchSize(count=first), BatchSize(percent=percent))
        if len(call_sizes(trial, fleet, tenants, cap)) <= most:
            return f"batch-size: {first},{percent}% fits ({most} calls at most)"
    return f"batch-size: 100% fits ({most} calls at most)"


def timeout_for(worst: float, spent: float) -> int:
    """A ``timeout`` that holds a plan's ``worst`` case after what the run ``spent`` before it, twice
    over: those reads (gates, enumeration, snapshot) take their own time on the next run."""
    return math.ceil(worst + 2 * spent)
