"""Command-line values checked where they are parsed, one definition for every command.

`Parser` turns every parse error (an unknown flag, a missing one, a bad value) into one line on
stderr and exit status 2. `Number` is the `type=` of every numeric flag: it refuses what is not
a number, nan and inf, and values outside the flag's range, naming the range. The flags of all
commands use the ranges below, so a test can try every one of them (tests/test_cli.py).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: `litevar COMMAND: error: ...`, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


@dataclass(frozen=True)
class Number:
    """argparse `type=`: a finite int or float within [lo, hi] (an open end with lo_open / hi_open;
    None: unbounded)."""

    kind: type = float
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.describe()}") from None
        if not math.isfinite(value) or not self.contains(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give {self.describe()}")
        return value

    def contains(self, v: float) -> bool:
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        if self.lo is not None and self.hi is not None:
            return f"{what} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{what} {'<' if self.hi_open else '<='} {self.hi:g}"
        return what

    def outside(self) -> str | None:
        """A value just outside the range (None when unbounded): for tests."""
        if self.lo is not None:
            return str(self.kind(self.lo) if self.lo_open else self.kind(self.lo - 1))
        if self.hi is not None:
            return str(self.kind(self.hi) if self.hi_open else self.kind(self.hi + 1))
        return None

    @property
    def __name__(self) -> str:  # argparse names the type in some messages
        return "integer" if self.kind is int else "number"


COUNT = Number(int, 1)  # how many (images, repeats, steps, ...): at least one
NONNEG_INT = Number(int, 0)  # counts where 0 means off, seeds
SEED = Number(int, 0, 2 ** 63 - 1)
POSITIVE = Number(float, 0, lo_open=True)  # budgets, seconds, scales
NONNEG = Number(float, 0)  # e.g. the guidance scale (0: no guidance)
FRACTION = Number(float, 0, 1)  # top-p (0 = off)
SHARE = Number(float, 0, 1, lo_open=True)  # a share of something, e.g. the dense attention FLOPs kept
GAP = Number(float, 0, 1, hi_open=True)
RESOLUTION = Number(int, 1)


@dataclass(frozen=True)
class NumberList:
    """argparse `type=`: comma-separated numbers, each a `item`."""

    item: Number

    def __call__(self, text: str) -> list:
        values = [self.item(t.strip()) for t in text.split(",") if t.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated values, each {self.item.describe()}")
        return values

    @property
    def __name__(self) -> str:
        return "list"


def guard_value(text: str) -> str | float:
    """--guard: 'auto', or a fraction in [0, 1)."""
    if text == "auto":
        return text
    try:
        return Number(float, 0, 1, hi_open=True)(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e}; or 'auto' (the profile's own worst under-prediction)") from None


COUNTS = NumberList(COUNT)
