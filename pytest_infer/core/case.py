"""One parametrized test case (:class:`Case`): a technique on a device in a dtype."""

from __future__ import annotations

from dataclasses import dataclass

from pytest_infer.core.technique import Technique


@dataclass(frozen=True)
class Case:
    """One parametrized test case: a technique on a device in a dtype."""

    technique: Technique
    device: str
    dtype: str

    @property
    def id(self) -> str:
        return f"{self.device.replace(':', '')}-{self.dtype}-{self.technique.name}"

    def __repr__(self) -> str:
        return f"Case({self.id})"
