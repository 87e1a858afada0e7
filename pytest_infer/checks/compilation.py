"""The recompile guard: after warm-up, the documented varying inputs must not recompile.

Counted with torch's own facility (``torch._dynamo.utils.counters["stats"]["unique_graphs"]``, the
number of graphs dynamo has compiled in this process). The varying calls keep the batch size (a new
batch size is a new shape by design) and change what users change between calls: prompt lengths and
``max_new_tokens`` within the static cache.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_infer.core.technique import Technique
from pytest_infer.runtime.batch import encode
from pytest_infer.runtime.generation import greedy_generate


@dataclass
class RecompileResult:
    technique: str
    device: str
    dtype: str
    warmup_graphs: int
    warmup_s: float
    recompiles: int
    calls: list[str] = field(default_factory=list)
    steady_s: float = 0.0
    kind: str = "recompile_guard"

    @property
    def passed(self) -> bool:
        return self.recompiles == 0 and self.warmup_graphs > 0

    @property
    def failures(self) -> list[str]:
        out = []
        if self.warmup_graphs == 0:
            out.append("nothing was compiled during warm-up: the technique did not compile (silent fallback?)")
        if self.recompiles:
            out.append(
                f"{self.recompiles} recompilation(s) after warm-up over {len(self.calls)} calls: {', '.join(self.calls)}"
            )
        return out

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"recompile guard {verdict}: {self.technique} ({self.dtype}) on {self.device}: warm-up compiled "
            f"{self.warmup_graphs} graph(s) in {self.warmup_s:.1f} s; {self.recompiles} recompile(s) in "
            f"{len(self.calls)} further calls ({self.steady_s:.2f} s)"
        ]
        lines.extend(f"  - {f}" for f in self.failures)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            passed=self.passed,
            failures=self.failures,
            check="recompile",
            variant="",
            metrics={"recompiles": self.recompiles, "warmup_graphs": self.warmup_graphs, "compile_s": self.warmup_s},
        )
        return d


def graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def recompile_guard(
    model: Any,
    tokenizer: Any,
    prompts: tuple[str, ...],
    technique: Technique,
    device: str,
    dtype: str,
    new_tokens: int = 16,
) -> RecompileResult:
    import torch

    torch._dynamo.reset()  # graphs of an earlier test on the same code would hide this warm-up's compile
    start_graphs = graphs_compiled()
    t0 = time.perf_counter()
    greedy_generate(model, tokenizer, encode(tokenizer, prompts, device), technique, new_tokens)
    warmup_s = time.perf_counter() - t0
    warm = graphs_compiled()
    halves = tuple(" ".join(p.split()[: max(2, len(p.split()) // 2)]) for p in prompts)
    varied = [
        ("shorter prompts", halves, new_tokens),
        (f"max_new_tokens {new_tokens + 8}", prompts, new_tokens + 8),
        (f"max_new_tokens {max(2, new_tokens // 2)}", tuple(reversed(prompts)), max(2, new_tokens // 2)),
    ]
    t1 = time.perf_counter()
    for _, rows, n in varied:
        greedy_generate(model, tokenizer, encode(tokenizer, rows, device), technique, n)
    return RecompileResult(
        technique=technique.name,
        device=device,
        dtype=dtype,
        warmup_graphs=warm - start_graphs,
        warmup_s=warmup_s,
        recompiles=graphs_compiled() - warm,
        calls=[c[0] for c in varied],
        steady_s=time.perf_counter() - t1,
    )
