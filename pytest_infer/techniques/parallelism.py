"""Tensor parallelism: ranks started through torch.distributed, one model shard each."""

from __future__ import annotations

from pytest_infer.technique import Technique


def builtin() -> list[Technique]:
    return []
