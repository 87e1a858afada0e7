"""Upstream defects our checks found, recorded as strict xfails keyed to the affected stacks.

Strict: when an upstream fix lands, the case XPASSes and fails the run, telling us to retire the entry.
Versions are keyed narrowly (the versions we saw it on); on any other version the check runs as usual
and fails if the defect is still there, which is the alert we want.
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_infer.stack import Requirements, Stack

# suite test function -> the check it runs
CHECKS = {
    "test_logit_parity": "logits",
    "test_padded_batches": "padding",
    "test_generation_parity": "generation",
    "test_no_recompiles_after_warmup": "recompile",
}


@dataclass(frozen=True)
class KnownIssue:
    technique: str  # a technique name; matches stacks containing it
    check: str  # logits | padding | generation
    affected: Requirements  # the stacks it is known on (device kinds, package versions)
    reason: str
    evidence: str

    def applies(self, components: tuple[str, ...], check: str, stack: Stack) -> bool:
        return self.technique in components and self.check == check and self.affected.check(stack) is None


KNOWN_ISSUES: tuple[KnownIssue, ...] = (
    KnownIssue(
        technique="flex_attention",
        check="generation",
        affected=Requirements(device_kinds=frozenset({"cpu"}), packages=(("torch", ">=2.13,<2.14"),)),
        reason=(
            "torch 2.13 inductor (CPU): flex_attention in generate() on a left-padded batch emits C++ that does "
            "not compile ('cur_kvSplitSize0' was not declared in this scope)"
        ),
        evidence="scripts/repro/flex_cpu_padded_generate.py; docs/known-issues.md",
    ),
)


def known_issue(components: tuple[str, ...], check: str, stack: Stack) -> KnownIssue | None:
    return next((k for k in KNOWN_ISSUES if k.applies(components, check, stack)), None)
