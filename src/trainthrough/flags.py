"""argparse types for the flags every command shares (durations, ports, chaos kills).

argparse reports an ArgumentTypeError as ``argument --FLAG: MESSAGE``, so a bad value is
answered with the flag's name and the rule it broke, before anything starts.
"""

from __future__ import annotations

import argparse
import math

from trainthrough.spec import ChaosKill, SpecError, parse_duration, parse_kill

__all__ = ["duration", "kill", "port"]


def duration(text: str) -> float:
    """Seconds from ``20``, ``500ms``, ``30s``, ``1m30s``; never negative."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"must be a duration >= 0 such as '20s', got {text!r}")
    return seconds


def port(text: str) -> int:
    number = int(text) if text.isascii() and text.isdigit() else -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535 (0 picks a free one), got {text!r}")
    return number


def kill(text: str) -> ChaosKill:
    """``TARGET@TIME`` (``ps-head@30s``), checked as spec.chaos entries are."""
    try:
        return parse_kill(text)
    except SpecError as exc:
        raise argparse.ArgumentTypeError("; ".join(e.message for e in exc.errors)) from None
