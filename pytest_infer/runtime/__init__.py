"""Running a model: loading and checkpoint validation, batches and logits, generation, the continuous-batching
runner, KV caches, the multi-process launcher, memory probes. Below it only :mod:`pytest_infer.core`."""

from __future__ import annotations
