"""The resolved configuration of one session as plain values (:class:`InferConfig`); how it is resolved from the
command line and ini lives in the pytest layer (:mod:`pytest_infer.options`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_infer.core.resources import embedded_model_path


@dataclass(frozen=True)
class InferConfig:
    """The resolved configuration of one session (serialisable: see :meth:`to_dict`)."""

    model: str
    devices: tuple[str, ...]
    dtypes: tuple[str, ...]
    techniques: tuple[str, ...]
    suites: tuple[str, ...]
    reference: str
    reference_dtype: str
    strict: bool
    trust_remote_code: bool
    allow_pickle: bool
    cache_dir: str
    prompts: str
    max_models: int  # 0: auto (bounded by memory, see pytest_infer.models.ModelCache)
    tolerance_mode: str = "floor"
    new_tokens: tuple[int, ...] = (16, 64)
    padding: str = "auto"
    context: int = 0  # --infer-context: long prompts generated up to this many positions (0: off)
    report: str = ""
    markdown: str = ""
    list: bool = False
    baseline: str = ""
    perf_new_tokens: int = 32
    perf_scenarios: tuple[str, ...] = ("auto",)
    perf_rounds: int = 5
    perf_warmup: int = 0
    compare_fail: str = ""
    tp_size: int = 2
    rank_timeout: int = 300
    gpus_per_worker: int = 1
    plot: str = ""
    isolate: bool = False
    timeout: int = 0
    progress: float = 3.0
    tolerance: tuple[str, ...] = ()
    golden: str = ""  # the goldens folder (absolute), "" when off
    golden_record: bool = False
    golden_regen: bool = False
    golden_top_k: int = 20
    quality_text: str = ""
    quality_budget: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)  # option name -> "cli" | "ini" | "default"

    @property
    def model_is_embedded(self) -> bool:
        return Path(self.model) == embedded_model_path()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sources"] = dict(self.sources)
        return d
