"""The recompile guard: after warm-up, an identical call and the documented varying inputs must not compile
anything, and no compiled frame may hit torch's recompile limit.

Counted with torch's own facilities: ``torch._dynamo.utils.counters["stats"]["unique_graphs"]`` (the graphs
dynamo has compiled in this process), ``torch._dynamo.utils.guard_failures`` (per frame, the guards that failed
and made it recompile) and dynamo's warning when a frame hits ``torch._dynamo.config.recompile_limit`` (older:
``cache_size_limit``). The limit matters because a frame that hits it silently runs *uncompiled* from then on:
a path that recompiles on every call compiles 8 graphs during warm-up and then nothing, which a graph count
alone reads as "no recompiles". The varying calls keep the batch size (a new batch size is a new shape by
design) and change what users change between calls: prompt lengths and ``max_new_tokens`` within the static
cache.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_infer.core.technique import Technique
from pytest_infer.runtime.batch import encode
from pytest_infer.runtime.generation import greedy_generate

DYNAMO_LOGGER = "torch._dynamo.convert_frame"  # where dynamo warns "torch._dynamo hit config.recompile_limit (8)"


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
    identical_recompiles: int = 0  # graphs compiled by a call identical to the warm-up's
    limit_hits: list[str] = field(default_factory=list)  # frames that hit the recompile limit: frame, failed guard
    reasons: list[str] = field(default_factory=list)  # after warm-up: frame and the guard that failed
    kind: str = "recompile_guard"

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[str]:
        out = []
        if self.warmup_graphs == 0:
            out.append("nothing was compiled during warm-up: the technique did not compile (silent fallback?)")
        out.extend(
            f"torch.compile hit its recompile limit: {hit}; from then on this frame runs uncompiled (its compiled "
            "code is no longer used)"
            for hit in self.limit_hits
        )
        if self.identical_recompiles:
            out.append(
                f"a call identical to the warm-up's compiled {self.identical_recompiles} new graph(s): a guard fails "
                "on every call"
            )
        if self.recompiles:
            out.append(
                f"{self.recompiles} recompilation(s) after warm-up over {len(self.calls)} calls: {', '.join(self.calls)}"
            )
        if (self.identical_recompiles or self.recompiles) and self.reasons:
            out.extend(f"recompiled {r}" for r in self.reasons)
        return out

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"recompile guard {verdict}: {self.technique} ({self.dtype}) on {self.device}: warm-up compiled "
            f"{self.warmup_graphs} graph(s) in {self.warmup_s:.1f} s; {self.identical_recompiles} recompile(s) in an "
            f"identical call; {self.recompiles} recompile(s) in {len(self.calls)} further calls ({self.steady_s:.2f} s)"
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
            metrics={
                "recompiles": self.recompiles,
                "identical_recompiles": self.identical_recompiles,
                "limit_hits": len(self.limit_hits),
                "warmup_graphs": self.warmup_graphs,
                "compile_s": self.warmup_s,
            },
        )
        return d


def graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _one_line(text: str, limit: int = 240) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def limit_hit(message: str) -> str | None:
    """``frame, last guard that failed`` from dynamo's recompile-limit warning (None for any other message)."""
    if "torch._dynamo hit config." not in message:
        return None
    first, *rest = message.splitlines()
    found = dict(
        (key, line.split(":", 1)[1].strip())
        for line in rest
        for key in ("function", "last reason")
        if line.strip().startswith(key + ":")
    )
    limit = first.split("hit config.", 1)[1].strip()
    frame = found.get("function", "an unnamed frame")
    return _one_line(f"{limit} for {frame}, last failed guard: {found.get('last reason', 'not reported')}")


class _LimitWatch(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a handler must never break the run it watches
            hit = limit_hit(record.getMessage())
            if hit and hit not in self.hits:
                self.hits.append(hit)


@contextlib.contextmanager
def watching_recompile_limit() -> Iterator[list[str]]:
    """The recompile-limit hits of the code run inside (a list filled as they happen)."""
    handler = _LimitWatch()
    logger = logging.getLogger(DYNAMO_LOGGER)
    logger.addHandler(handler)
    try:
        yield handler.hits
    finally:
        logger.removeHandler(handler)


def _frames_at_limit() -> list[str]:
    """Frames whose compiled-code cache is full (the limit reached even where dynamo's warning was not seen, e.g.
    logging reconfigured by the user)."""
    import torch._dynamo
    from torch._dynamo.utils import guard_failures

    config = torch._dynamo.config
    limit = getattr(config, "recompile_limit", None) or getattr(config, "cache_size_limit", None)
    entries = getattr(torch._dynamo.eval_frame, "_debug_get_cache_entry_list", None)
    if not limit or entries is None:
        return []
    out = []
    for code, failed in list(guard_failures.items()):
        with contextlib.suppress(Exception):
            if len(entries(code)) >= limit:
                out.append(
                    _one_line(f"{_frame(code)}: {limit} compiled versions, last failed guard: {_latest(failed)}")
                )
    return out


def _latest(failed: list[str]) -> str:
    """The guard failure of the newest compiled version (reasons are listed per cache entry, each ``frame/n: ...``)."""

    def compile_id(reason: str) -> int:
        found = re.match(r"\s*\d+/(\d+)", reason)
        return int(found.group(1)) if found else -1

    return max(reversed(failed), key=compile_id).split("User stack trace:")[0] if failed else "not reported"


def _frame(code: Any) -> str:
    return f"'{code.co_name}' ({code.co_filename}:{code.co_firstlineno})"


def _guard_counts() -> dict[Any, int]:
    from torch._dynamo.utils import guard_failures

    return {code: len(failed) for code, failed in list(guard_failures.items())}


def _new_guard_failures(before: dict[Any, int]) -> list[str]:
    """Per frame that recompiled since ``before``: the frame and the last guard that failed."""
    from torch._dynamo.utils import guard_failures

    return [
        _one_line(f"{_frame(code)}: guard failed: {_latest(failed[before.get(code, 0) :])}")
        for code, failed in list(guard_failures.items())
        if len(failed) > before.get(code, 0)
    ]


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
    halves = tuple(" ".join(p.split()[: max(2, len(p.split()) // 2)]) for p in prompts)
    varied = [
        ("shorter prompts", halves, new_tokens),
        (f"max_new_tokens {new_tokens + 8}", prompts, new_tokens + 8),
        (f"max_new_tokens {max(2, new_tokens // 2)}", tuple(reversed(prompts)), max(2, new_tokens // 2)),
    ]
    with watching_recompile_limit() as hits:
        start_graphs = graphs_compiled()
        t0 = time.perf_counter()
        greedy_generate(model, tokenizer, encode(tokenizer, prompts, device), technique, new_tokens)
        warmup_s = time.perf_counter() - t0
        warm, guards = graphs_compiled(), _guard_counts()
        greedy_generate(model, tokenizer, encode(tokenizer, prompts, device), technique, new_tokens)
        identical = graphs_compiled()
        t1 = time.perf_counter()
        for _, rows, n in varied:
            greedy_generate(model, tokenizer, encode(tokenizer, rows, device), technique, n)
        steady_s = time.perf_counter() - t1
    return RecompileResult(
        technique=technique.name,
        device=device,
        dtype=dtype,
        warmup_graphs=warm - start_graphs,
        warmup_s=warmup_s,
        recompiles=graphs_compiled() - identical,
        calls=[c[0] for c in varied],
        steady_s=steady_s,
        identical_recompiles=identical - warm,
        limit_hits=list(hits) or _frames_at_limit(),
        reasons=_new_guard_failures(guards),
    )
