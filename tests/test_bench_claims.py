"""The paper's claims decided from runs (bench/claims.py): each verdict follows from the
bootstrap interval over seeds, on hand-made runs whose answer is known:
- chain failover: 0.1 s against the paper's 10-14 s is refuted, 12 s confirmed;
- the stateless leap: +17 points confirmed; +6 points depends on the outage when it is
  shorter than the paper's, and is refuted at the paper's outage;
- checkpointing's extra time: 1.10x confirmed; an interval from below 1x to above 1.1x decides
  nothing; 2x depends on the outage against the time
  to target;
- stateless vs the best other variant after a kill: better in every seed confirmed,
  worse refuted, overlapping undecided;
- the section puts the paper's numbers beside ours and lists every verdict.
"""

from __future__ import annotations

from typing import Any

from trainthrough.bench.aggregating import cells
from trainthrough.bench.claims import section, verdicts


def run(variant: str, scenario: str, seed: int, *, ttt: float = 10.0, before: float = 0.5, after: float = 0.5,
        total: float = 1.0) -> dict[str, Any]:  # fmt: skip
    kills = [] if scenario == "no-failure" else [
        {"at": 5.0, "accuracy_before": before, "accuracy_after": after, "phases": {"total": total}, "lost_updates": 0}
    ]  # fmt: skip
    return {"variant": variant, "scenario": scenario, "workers": 2, "seed": seed, "status": "ok",
            "time_to_target": ttt, "kills": kills, "kills_planned": [5.0] if kills else []}  # fmt: skip


def verdict(runs: list[dict[str, Any]], fragment: str, outage: float = 5.0) -> str:
    """The verdict on the one claim whose text contains `fragment`."""
    [found] = [v.verdict for v in verdicts(cells(runs), outage) if fragment in v.claim]
    return found


def test_chain_failover_against_10_to_14_seconds() -> None:
    fast = [run("chain-async", "one-kill", s, total=t) for s, t in enumerate((0.09, 0.1, 0.12))]
    assert verdict(fast, "failover") == "refuted"
    slow = [run("chain-async", "one-kill", s, total=t) for s, t in enumerate((11.0, 12.0, 13.0))]
    assert verdict(slow, "failover") == "confirmed"


def test_the_stateless_leap_and_what_it_depends_on() -> None:
    big = [run("stateless", "one-kill", s, before=0.5, after=0.5 + g / 100) for s, g in enumerate((16, 17, 18))]
    assert verdict(big, "leaps") == "confirmed"
    small = [run("stateless", "one-kill", s, before=0.5, after=0.5 + g / 100) for s, g in enumerate((5, 6, 7))]
    assert verdict(small, "leaps", outage=5.0).startswith("depends on the outage length (here 5 s")
    assert verdict(small, "leaps", outage=20.0) == "refuted"


def test_checkpointing_extra_time() -> None:
    base = [run("checkpoint-sync", "no-failure", s, ttt=20.0) for s in range(3)]
    ten_percent = base + [run("checkpoint-sync", "one-kill", s, ttt=t) for s, t in enumerate((21.0, 22.0, 23.0))]
    assert verdict(ten_percent, "Checkpointing") == "confirmed"
    double = base + [run("checkpoint-sync", "one-kill", s, ttt=40.0) for s in range(3)]
    assert verdict(double, "Checkpointing").startswith("depends on the outage against the time to target")
    # Seeds from no extra time to several times it: consistent with 10%, but they decide nothing.
    scattered = base + [run("checkpoint-sync", "one-kill", s, ttt=t) for s, t in enumerate((13.0, 22.0, 65.0))]
    assert verdict(scattered, "Checkpointing").startswith("depends on the run (the interval spans no extra time to")


def test_stateless_against_the_best_other_variant_after_a_kill() -> None:
    def runs(stateless: tuple[float, ...], chain: tuple[float, ...]) -> list[dict[str, Any]]:
        return [run("stateless", "one-kill", s, after=a) for s, a in enumerate(stateless)] + [
            run("chain-sync", "one-kill", s, after=a) for s, a in enumerate(chain)
        ]

    better = runs((0.8, 0.81, 0.82), (0.7, 0.71, 0.72))
    assert verdict(better, "better accuracy") == "confirmed"
    assert verdict(runs((0.6, 0.61, 0.62), (0.7, 0.71, 0.72)), "better accuracy") == "refuted"
    assert verdict(runs((0.6, 0.7, 0.8), (0.65, 0.7, 0.75)), "better accuracy").startswith("depends on")


def test_the_section_has_the_papers_numbers_beside_ours_and_every_verdict() -> None:
    runs = [run("stateless", "one-kill", s, before=0.6, after=0.7, ttt=9.0) for s in range(3)]
    runs += [run("chain-sync", "one-kill", s, before=0.6, after=0.6, total=0.1) for s in range(3)]
    text = "\n".join(section(cells(runs), {"outage": 5, "scenarios": [{"name": "one-kill", "kills": [5]}]}))
    assert "| stateless | 0.281 -> 0.426 | 0.600 -> 0.700 | 188 s | 9.0 s [9.0, 9.0] | 106 s | - |" in text
    assert "kills at 5 s (one-kill) after the first update" in text
    assert text.count("| **") == 3  # stateless vs others, the leap, the failover (no checkpoint cells)
