"""Continuous batching (``model.generate_batch``, the long-lived manager) run under watch, and its checks.

:func:`run_generate_batch` and :func:`run_manager` hand Transformers an explicit KV budget (:data:`CB_BUDGET`; the
defaults size the cache from free device memory, system RAM on CPU) and record every forward the batching loop
makes: the attention implementation that ran, the paged cache and its size, the tokens per forward. A
:class:`BatchRun` then says what went wrong beside the tokens: a request missing or failed, results out of input
order, another attention than the one requested, a forward over the token budget, the model's attention left
switched afterwards.

:class:`BatchingChecks` (the suite's ``infer_batching``) compares each request token by token with the reference's
per-prompt ``generate`` on a prompt set larger than one batch (so scheduling and chunked prefill run), across two
calls in a row, and through the manager API. :func:`measure_throughput` times ``generate_batch`` against sequential
per-prompt ``generate``. Nothing here imports torch or Transformers at module level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_infer.generation import token_divergence
from pytest_infer.technique import Technique

if TYPE_CHECKING:
    from pytest_infer.checks import ParityChecks
    from pytest_infer.generation import Generated
    from pytest_infer.measure import Driver
    from pytest_infer.session import Case

# Pages of 32 tokens, 64 blocks (2048 cached tokens per layer), at most 64 tokens per forward: small enough that
# the bundled prompts need several forwards and a long prompt is prefilled in chunks.
CB_BUDGET: dict[str, int] = {"page_size": 32, "num_blocks": 64, "max_batch_tokens": 64}
BUDGET_FIELDS = ("page_size", "num_blocks", "max_batch_tokens")
MANAGER_TIMEOUT_S = 120.0


class BatchingError(RuntimeError):
    """A continuous-batching run went wrong beside its tokens (missing request, wrong attention...)."""


def require_explicit_budget(config: Any) -> dict[str, int]:
    """The KV budget of ``config`` (page size, blocks, tokens per batch); raise when any is left to Transformers."""
    values = {f: getattr(config, f, None) for f in BUDGET_FIELDS}
    if values["page_size"] is None:  # Transformers < 5.17
        values["page_size"] = getattr(config, "block_size", None)
    unset = [f for f, v in values.items() if v is None]
    if unset:
        raise BatchingError(
            f"continuous batching config leaves {', '.join(unset)} unset: Transformers would size the KV cache "
            "from free device memory (system RAM on CPU); set them explicitly (pytest_infer.generation.cb_config)"
        )
    return {k: int(v) for k, v in values.items() if v is not None}


def dispatched_attention(name: str) -> str:
    """The attention implementation the installed Transformers runs for ``name`` under continuous batching.

    ``paged|eager`` is its own function; Transformers >= 5.x dropped the other ``paged|`` names (``paged|sdpa``,
    ``paged|flash_attention_2``...), mapping them to the plain implementation that reads the paged cache itself.
    Plain ``eager`` becomes ``paged|eager`` (``switch_to_cb_friendly_attn``).
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name == "eager":
        return "paged|eager"
    if name in ALL_ATTENTION_FUNCTIONS:
        return name
    base = name.removeprefix("paged|")
    return base if base in ALL_ATTENTION_FUNCTIONS else name


def spelled_attention(name: str) -> str:
    """``name`` as the installed Transformers wants it at load time: a ``paged|`` alias it only keeps for backward
    compatibility (deprecated in 5.x, with a FutureWarning) is loaded under the name it maps to."""
    return name if name == "eager" else dispatched_attention(name)


def requested_attention(technique: Technique, model: Any) -> str:
    """What the technique asks to run under continuous batching: its ``attn_implementation`` (or the model's own)."""
    from pytest_infer.technique import Lazy

    asked = technique.load_kwargs.get("attn_implementation")
    if isinstance(asked, Lazy):
        asked = asked.resolve()
    return dispatched_attention(str(asked or model.config._attn_implementation))


@dataclass
class Forward:
    """One forward of the batching loop: what ran and on how many tokens."""

    attention: str
    paged_cache: bool
    query_tokens: int
    sequences: int


@dataclass
class BatchRun:
    """What one continuous-batching run returned and what its forwards show."""

    api: str  # generate_batch | manager
    call: int
    inputs: list[list[int]]
    tokens: list[list[int] | None]  # per input; None when no result came back
    request_ids: list[str | None]
    errors: dict[int, str]
    out_of_order: list[str]
    unmatched: list[str]  # results for no input
    forwards: list[Forward]
    cache: dict[str, int]  # what the paged cache was built with
    budget: dict[str, int]  # what was asked for
    requested_attention: str
    attention_before: str
    attention_after: str
    seconds: float

    @property
    def max_forward_tokens(self) -> int:
        return max((f.query_tokens for f in self.forwards), default=0)

    def where(self, index: int) -> str:
        rid = self.request_ids[index]
        return f"request {index} ({f'{rid}, ' if rid else ''}{len(self.inputs[index])} prompt tokens)"

    def problems(self) -> list[str]:
        """Everything wrong with the run except the tokens' values, each naming the request or forward."""
        label = f"{self.api} call {self.call}"
        out: list[str] = []
        for i, toks in enumerate(self.tokens):
            if i in self.errors:
                out.append(f"{self.where(i)} failed in {label}: {self.errors[i]}")
            elif toks is None:
                got = sum(t is not None for t in self.tokens)
                out.append(f"{self.where(i)} missing from {label}: {got} of {len(self.inputs)} requests came back")
        out.extend(f"{label}: {text}" for text in self.out_of_order + self.unmatched)
        ran = sorted({f.attention for f in self.forwards})
        if not self.forwards or not any(f.paged_cache for f in self.forwards):
            out.append(f"{label}: no forward received a paged KV cache: continuous batching did not run")
        elif ran != [self.requested_attention]:
            out.append(
                f"{label} ran attention {', '.join(map(repr, ran))}, requested {self.requested_attention!r}: "
                "Transformers switched the implementation (auto_switch_to_flash, or an eager/sdpa fallback)"
            )
        limit = self.budget["max_batch_tokens"]
        if self.max_forward_tokens > limit:
            out.append(
                f"{label}: a forward processed {self.max_forward_tokens} tokens > max_batch_tokens {limit}: the "
                "configured budget was not applied"
            )
        blocks, asked = self.cache.get("num_blocks"), self.budget["num_blocks"]
        per_sector = max(1, self.cache.get("blocks_per_sector", 1))
        if blocks is not None and not asked <= blocks < asked + per_sector:
            out.append(
                f"{label}: the paged cache holds {blocks} blocks, {asked} configured: it was not sized from the "
                "explicit budget"
            )
        if self.attention_after != self.attention_before:
            out.append(
                f"{label} left the model's attention implementation switched: {self.attention_before!r} before, "
                f"{self.attention_after!r} after"
            )
        return out

    def raise_for_problems(self) -> None:
        problems = self.problems()
        if problems:
            raise BatchingError("continuous batching run went wrong:\n  - " + "\n  - ".join(problems))

    def evidence(self) -> str:
        """What the run exercised, from its inputs and its recorded forwards."""
        prompts = [len(x) for x in self.inputs]
        over = sum(n > self.budget["max_batch_tokens"] for n in prompts)
        ran = ", ".join(repr(a) for a in sorted({f.attention for f in self.forwards})) or "none"
        return (
            f"{self.api} call {self.call}: {len(self.inputs)} requests, prompts {min(prompts, default=0)}-"
            f"{max(prompts, default=0)} tokens ({sum(prompts)} in all, {over} longer than max_batch_tokens "
            f"{self.budget['max_batch_tokens']}: prefilled in chunks), {len(self.forwards)} forwards of at most "
            f"{self.max_forward_tokens} tokens, attention {ran}, paged cache of {self.cache.get('num_blocks', '?')} "
            f"blocks, {self.seconds:.2f} s"
        )


@contextlib.contextmanager
def _watch(model: Any, into: list[Forward], cache: dict[str, int]) -> Iterator[None]:
    """Record every forward of ``model`` (the batching loop calls it from its own thread)."""
    lock = threading.Lock()

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        paged = kwargs.get("cache")
        ids = kwargs.get("input_ids")
        cu = kwargs.get("cu_seq_lens_q")
        record = Forward(
            attention=str(model.config._attn_implementation),
            paged_cache=type(paged).__name__ == "PagedAttentionCache",
            query_tokens=int(ids.shape[-1]) if ids is not None else 0,
            sequences=int(cu.shape[0]) - 1 if cu is not None else 1,
        )
        with lock:
            into.append(record)
            if paged is not None and not cache:
                cache.update(_cache_size(paged))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _cache_size(paged: Any) -> dict[str, int]:
    out = {k: int(v) for k in ("num_blocks", "max_batch_tokens", "num_sectors") if (v := getattr(paged, k, None))}
    if out.get("num_sectors"):
        out["blocks_per_sector"] = -(-out["num_blocks"] // out["num_sectors"])
    pages = [getattr(a, "tokens_per_page", None) for a in getattr(paged, "cache_allocators", {}).values()]
    if pages and pages[0]:
        out["page_size"] = int(pages[0])
    return out


def _config_for(
    technique: Technique, device: str, overrides: Mapping[str, Any] | None = None
) -> tuple[Any, dict[str, int]]:
    """The ContinuousBatchingConfig of a run: the explicit budget, the technique's ``generate_kwargs``, then
    ``overrides``; refused when the budget is left to Transformers."""
    from pytest_infer.generation import cb_config
    from pytest_infer.technique import resolve_kwargs

    config = cb_config(**{**resolve_kwargs(technique.generate_kwargs, device=device), **(overrides or {})})
    return config, require_explicit_budget(config)


def _generation_config(model: Any, tokenizer: Any, new_tokens: int) -> Any:
    from transformers import GenerationConfig

    from pytest_infer.generation import never_token

    return GenerationConfig(
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=never_token(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )


def _collect(run: BatchRun, outputs: Sequence[Any]) -> None:
    """Place each result at its input (by prompt ids; duplicates in order) and note anything out of place."""
    pending: dict[tuple[int, ...], list[int]] = {}
    for i, ids in enumerate(run.inputs):
        pending.setdefault(tuple(ids), []).append(i)
    placed: list[int] = []
    for out in outputs:
        slots = pending.get(tuple(out.prompt_ids))
        if not slots:
            run.unmatched.append(f"result {out.request_id} is for a prompt of {len(out.prompt_ids)} tokens never sent")
            continue
        i = slots.pop(0)
        run.request_ids[i] = str(out.request_id)
        if out.error:
            run.errors[i] = str(out.error)
        run.tokens[i] = list(out.generated_tokens)
        placed.append(i)
    if run.api == "generate_batch" and placed != sorted(placed):
        first = next(k for k, i in enumerate(placed) if i != sorted(placed)[k])
        run.out_of_order.append(
            f"results not in input order: position {first} holds the result for request {placed[first]}"
        )


def _new_run(api: str, call: int, model: Any, technique: Technique, inputs: list[list[int]], budget: Any) -> BatchRun:
    before = str(model.config._attn_implementation)
    return BatchRun(
        api=api,
        call=call,
        inputs=[list(x) for x in inputs],
        tokens=[None] * len(inputs),
        request_ids=[None] * len(inputs),
        errors={},
        out_of_order=[],
        unmatched=[],
        forwards=[],
        cache={},
        budget=budget,
        requested_attention=requested_attention(technique, model),
        attention_before=before,
        attention_after=before,
        seconds=0.0,
    )


def run_generate_batch(
    model: Any,
    tokenizer: Any,
    inputs: list[list[int]],
    technique: Technique,
    new_tokens: int,
    *,
    call: int = 1,
    overrides: Mapping[str, Any] | None = None,
) -> BatchRun:
    """``model.generate_batch`` on token-id prompts with the explicit budget (``overrides``: other
    ContinuousBatchingConfig values, e.g. a larger ``max_batch_tokens``), every forward recorded."""
    import torch

    config, budget = _config_for(technique, str(model.device), overrides)
    run = _new_run("generate_batch", call, model, technique, inputs, budget)
    start = time.perf_counter()
    # Not under torch.inference_mode(): with Transformers 5.17 the batching worker thread then fails to reset its
    # static tensors (docs/stacks/h200.md, finding 3); generate_batch manages grad mode itself.
    with _watch(model, run.forwards, run.cache), torch.no_grad(), technique.active():
        outputs = model.generate_batch(
            inputs=run.inputs,
            generation_config=_generation_config(model, tokenizer, new_tokens),
            continuous_batching_config=config,
            progress_bar=False,
        )
    run.seconds = time.perf_counter() - start
    run.attention_after = str(model.config._attn_implementation)
    _collect(run, list(outputs.values()))
    return run


def manager_unsupported(model: Any) -> str | None:
    """Why the long-lived manager API cannot be checked on ``model`` (None: it can)."""
    import transformers

    if not callable(getattr(model, "init_continuous_batching", None)):
        return f"transformers {transformers.__version__} has no init_continuous_batching (long-lived manager API)"
    from transformers.generation.continuous_batching import ContinuousBatchingManager

    missing = [m for m in ("start", "add_request", "get_result", "stop") if not hasattr(ContinuousBatchingManager, m)]
    if missing:
        return f"transformers {transformers.__version__}: ContinuousBatchingManager lacks {', '.join(missing)}"
    return None


def run_manager(model: Any, tokenizer: Any, inputs: list[list[int]], technique: Technique, new_tokens: int) -> BatchRun:
    """The manager API: ``init_continuous_batching``, start, add half the requests, add the rest once a first result
    is back (requests join a running batch), collect every result, stop."""
    import torch

    config, budget = _config_for(technique, str(model.device))
    run = _new_run("manager", 1, model, technique, inputs, budget)
    gen_config = _generation_config(model, tokenizer, new_tokens)
    start = time.perf_counter()
    deadline = start + MANAGER_TIMEOUT_S
    results: list[Any] = []
    half = max(1, len(inputs) // 2)
    with _watch(model, run.forwards, run.cache), torch.no_grad(), technique.active():
        manager = model.init_continuous_batching(generation_config=gen_config, continuous_batching_config=config)
        manager.start()
        try:
            for i, ids in enumerate(run.inputs[:half]):
                manager.add_request(input_ids=ids, request_id=f"request_{i}", max_new_tokens=new_tokens)
            _drain(manager, results, until=1, deadline=deadline)
            for i, ids in enumerate(run.inputs[half:], start=half):
                manager.add_request(input_ids=ids, request_id=f"request_{i}", max_new_tokens=new_tokens)
            _drain(manager, results, until=len(inputs), deadline=deadline)
        finally:
            manager.stop(block=True, timeout=30)
            destroy = getattr(manager, "destroy", None)
            if callable(destroy):
                destroy()
    run.seconds = time.perf_counter() - start
    run.attention_after = str(model.config._attn_implementation)
    _collect(run, results)
    return run


def _drain(manager: Any, into: list[Any], *, until: int, deadline: float) -> None:
    while len(into) < until and time.perf_counter() < deadline:
        result = manager.get_result(timeout=0.5)
        if result is not None and result.is_finished():
            into.append(result)
        elif result is None and not manager.is_running():
            return


@contextlib.contextmanager
def plain_attention(model: Any) -> Iterator[None]:
    """``generate`` on a model loaded for continuous batching: ``paged|eager`` has no causal mask outside the
    batching loop (no mask function is registered for it), so it runs as ``eager`` inside this block."""
    current = str(model.config._attn_implementation)
    if not current.startswith("paged|"):
        yield
        return
    model.set_attn_implementation(current.removeprefix("paged|"))
    try:
        yield
    finally:
        model.set_attn_implementation(current)


def budget_prompts(prompts: Sequence[str], tokenizer: Any, max_batch_tokens: int) -> list[str]:
    """The prompt set grown past one batch: every prompt, then runs of consecutive prompts joined until each
    is longer than ``max_batch_tokens`` (prefilled in chunks); in all more than three batches of tokens."""
    base = [p for p in prompts if p.strip()]
    if not base:
        raise ValueError("budget_prompts needs at least one non-empty prompt")

    def length(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    out = list(base)
    longer = 0
    start = 0
    while longer < 2 or sum(map(length, out)) <= 3 * max_batch_tokens:
        joined = base[start % len(base)]
        k = start + 1
        while length(joined) <= max_batch_tokens + max_batch_tokens // 2:
            joined = f"{joined} {base[k % len(base)]}"
            k += 1
        out.append(joined)
        longer += 1
        start += 1
        if start > 4 * len(base) + 4:
            break
    return out


@dataclass
class RequestRow:
    """How one request of one run compares with the reference's per-prompt generation."""

    request: int
    call: int
    status: str  # match | near_tie | diverged | short | missing
    compared: int
    request_id: str | None = None
    prompt_tokens: int = 0
    step: int | None = None
    reference_token: int | None = None
    candidate_token: int | None = None
    reference_piece: str = ""
    candidate_piece: str = ""
    reference_margin: float | None = None
    text_so_far: str = ""

    def where(self, api: str) -> str:
        rid = f"{self.request_id}, " if self.request_id else ""
        return f"request {self.request} ({rid}{self.prompt_tokens} prompt tokens) in {api} call {self.call}"


@dataclass
class BatchingResult:
    """A continuous-batching check: per-request token parity with the reference, and the runs' own problems."""

    check: str  # budget_parity | repeat_calls | manager_api
    technique: str
    reference: str
    device: str
    dtype: str
    reference_dtype: str
    new_tokens: int
    near_tie: float
    budget: dict[str, int]
    rows: list[RequestRow]
    problems: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    api: str = "generate_batch"
    kind: str = "batching"

    @property
    def failures(self) -> list[str]:
        out = list(self.problems)
        for r in self.rows:
            if r.status == "diverged":
                out.append(
                    f"{r.where(self.api)} diverged at step {r.step}: reference {r.reference_token} "
                    f"{r.reference_piece!r} (margin {_fmt(r.reference_margin)}) vs candidate {r.candidate_token} "
                    f"{r.candidate_piece!r}; near-tie threshold {self.near_tie:g}; text so far: {r.text_so_far!r}"
                )
            elif r.status == "short":
                out.append(f"{r.where(self.api)}: candidate produced {r.compared} of {self.new_tokens} tokens")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def metrics(self) -> dict[str, float]:
        total = sum(r.compared for r in self.rows)
        return {
            "requests": float(len({r.request for r in self.rows})),
            "matched_tokens": float(total),
            "match_rate": total / max(1, self.new_tokens * len(self.rows)),
            "near_ties": float(sum(r.status == "near_tie" for r in self.rows)),
            "missing": float(sum(r.status == "missing" for r in self.rows)),
        }

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        budget = ", ".join(f"{k}={v}" for k, v in self.budget.items())
        lines = [
            f"batching {self.check.replace('_', ' ')} {verdict}: {self.technique} ({self.dtype}) vs reference "
            f"{self.reference} ({self.reference_dtype}) per-prompt generate on {self.device}, "
            f"{int(self.metrics['requests'])} requests x {self.new_tokens} greedy tokens; budget {budget}"
        ]
        lines.extend(f"  {e}" for e in self.evidence)
        for r in self.rows:
            if r.status == "near_tie":
                lines.append(
                    f"  {r.where(self.api)}: near-tie at step {r.step} (reference margin {_fmt(r.reference_margin)} "
                    f"< {self.near_tie:g}): {r.reference_piece!r} vs {r.candidate_piece!r}; compared up to there"
                )
        lines.extend(f"  - {f}" for f in self.failures)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "check": "batching",
            "variant": self.check,
            "technique": self.technique,
            "reference": self.reference,
            "device": self.device,
            "dtype": self.dtype,
            "reference_dtype": self.reference_dtype,
            "passed": self.passed,
            "new_tokens": self.new_tokens,
            "near_tie": self.near_tie,
            "budget": dict(self.budget),
            "api": self.api,
            "metrics": self.metrics,
            "failures": self.failures,
            "evidence": list(self.evidence),
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.3g}"


def compare_requests(
    reference: Generated, run: BatchRun, tokenizer: Any, prompts: Sequence[str], near_tie: float, new_tokens: int
) -> list[RequestRow]:
    """Each request of ``run`` against the reference's per-prompt tokens (same order); a divergence is accepted
    only where the reference's top-1/top-2 margin is below ``near_tie``."""
    rows: list[RequestRow] = []
    for i, ref in enumerate(reference.tokens):
        cand = run.tokens[i]
        common = dict(request=i, call=run.call, request_id=run.request_ids[i], prompt_tokens=len(run.inputs[i]))
        if cand is None:
            rows.append(RequestRow(status="missing", compared=0, **common))  # type: ignore[arg-type]
            continue
        ref, cand = ref[:new_tokens], cand[:new_tokens]
        row = RequestRow(status="match", compared=min(len(ref), len(cand)), **common)  # type: ignore[arg-type]
        d = token_divergence(ref, cand, tokenizer, prompts[i] if i < len(prompts) else "")
        if d is not None:
            margin = reference.margins[i][d.step] if reference.margins else None
            row = RequestRow(
                status="near_tie" if margin is not None and margin < near_tie else "diverged",
                compared=d.step,
                reference_margin=margin,
                **dataclasses.asdict(d),
                **common,  # type: ignore[arg-type]
            )
        elif len(cand) < min(len(ref), new_tokens):
            row.status = "short"
        rows.append(row)
    return rows


class BatchingChecks:
    """The continuous-batching checks of one test, on top of its :class:`~pytest_infer.checks.ParityChecks`
    (same session cache, tolerance, reference and report)."""

    def __init__(self, parity: ParityChecks) -> None:
        self.parity = parity
        self.session = parity.session
        self.tokenizer = parity.tokenizer

    # --- prompts and the per-prompt reference -------------------------------------------------------------
    def prompts(self) -> list[str]:
        """The session's prompts grown past one batch's token budget (see :func:`budget_prompts`)."""
        key = ("batching-prompts", self.session.source, tuple(self.parity.prompts))
        return self.session.cache.tensor(
            key, lambda: budget_prompts(self.parity.prompts, self.tokenizer, CB_BUDGET["max_batch_tokens"])
        )

    def inputs(self, prompts: Sequence[str]) -> list[list[int]]:
        return [list(self.tokenizer(p)["input_ids"]) for p in prompts]

    def reference(self, device: str, prompts: Sequence[str], new_tokens: int) -> Generated:
        """The reference's greedy tokens and margins, each prompt alone through ``generate`` (computed once)."""
        from pytest_infer.generation import _join, greedy_generate
        from pytest_infer.models import encode
        from pytest_infer.session import Case

        s = self.session
        ref = Case(s.reference, device, s.config.reference_dtype)
        key = ("solo-generate", s.source, ref.technique.name, ref.dtype, device, tuple(prompts), new_tokens)

        def compute() -> Generated:
            model = self.parity.model(ref)
            parts = [
                greedy_generate(model, self.tokenizer, encode(self.tokenizer, [p], device), ref.technique, new_tokens)
                for p in prompts
            ]
            return _join(parts)

        return s.cache.tensor(key, compute)

    # --- checks -------------------------------------------------------------------------------------------
    def _result(self, check: str, case: Case, runs: list[BatchRun], prompts: list[str], n: int) -> BatchingResult:
        tolerance, _ = self.parity.tolerance(case)
        reference = self.reference(case.device, prompts, n)
        rows = [
            r
            for run in runs
            for r in compare_requests(reference, run, self.tokenizer, prompts, tolerance.tie_margin, n)
        ]
        result = BatchingResult(
            check=check,
            technique=case.technique.name,
            reference=self.session.reference.name,
            device=case.device,
            dtype=case.dtype,
            reference_dtype=self.session.config.reference_dtype,
            new_tokens=n,
            near_tie=tolerance.tie_margin,
            budget=runs[0].budget,
            rows=rows,
            problems=[p for run in runs for p in run.problems()],  # missing requests are named there
            evidence=[run.evidence() for run in runs],
            api=runs[0].api,
        )
        return self.parity._record(result)

    def budget_parity(self, case: Case) -> BatchingResult:
        """Every request of a prompt set larger than one batch (chunked prefill, several forwards) equals the
        reference's per-prompt greedy generation. The shortest configured length: the prompts (up to 120
        tokens, pages of 32) already cross pages and chunks; generation parity covers the longest length."""
        prompts, n = self.prompts(), min(self.session.config.new_tokens)
        run = run_generate_batch(self.parity.model(case), self.tokenizer, self.inputs(prompts), case.technique, n)
        return self._result("budget_parity", case, [run], prompts, n)

    def repeat_calls(self, case: Case) -> BatchingResult:
        """Two ``generate_batch`` calls in a row on the same model: each returns every request with the reference's
        tokens, and each leaves the model's attention implementation as it found it."""
        prompts, n = self.prompts(), min(self.session.config.new_tokens)
        model, inputs = self.parity.model(case), self.inputs(prompts)
        runs = [run_generate_batch(model, self.tokenizer, inputs, case.technique, n, call=c) for c in (1, 2)]
        return self._result("repeat_calls", case, runs, prompts, n)

    def manager_api(self, case: Case) -> BatchingResult:
        """The long-lived manager: requests added while it runs, every result collected, attention restored."""
        prompts, n = self.prompts(), min(self.session.config.new_tokens)
        run = run_manager(self.parity.model(case), self.tokenizer, self.inputs(prompts), case.technique, n)
        return self._result("manager_api", case, [run], prompts, n)

    def assert_budget_parity(self, case: Case) -> BatchingResult:
        return self._assert(case, self.budget_parity)

    def assert_repeat_calls(self, case: Case) -> BatchingResult:
        return self._assert(case, self.repeat_calls)

    def assert_manager_api(self, case: Case) -> BatchingResult:
        return self._assert(case, self.manager_api)

    def _assert(self, case: Case, check: Any) -> BatchingResult:
        from pytest_infer.checks import _assert

        with self.parity._guard(case):
            result: BatchingResult = _assert([check(case)])[0]
            return result


@dataclass
class ThroughputResult:
    """Generated tokens per second of ``generate_batch`` and of sequential per-prompt ``generate``."""

    technique: str
    device: str
    requests: int
    new_tokens: int
    rounds: int
    batch_tokens: int
    sequential_tokens: int
    batch_s: list[float]
    sequential_s: list[float]
    budget: dict[str, int]
    kind: str = "batching_throughput"

    @property
    def batch_seconds(self) -> float:
        return statistics.median(self.batch_s)

    @property
    def sequential_seconds(self) -> float:
        return statistics.median(self.sequential_s)

    @property
    def batch_tokens_per_s(self) -> float:
        return self.batch_tokens / self.batch_seconds

    @property
    def sequential_tokens_per_s(self) -> float:
        return self.sequential_tokens / self.sequential_seconds

    @property
    def ratio(self) -> float:
        """Throughput of continuous batching over sequential generation (> 1: batching pays)."""
        return self.batch_tokens_per_s / self.sequential_tokens_per_s

    def message(self) -> str:
        return (
            f"throughput of {self.technique} on {self.device}: generate_batch {self.batch_tokens_per_s:.4g} tokens/s "
            f"vs sequential generate {self.sequential_tokens_per_s:.4g} tokens/s = {self.ratio:.3g}x "
            f"({self.requests} requests x {self.new_tokens} tokens, median of {self.rounds} paired rounds)"
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(
            batch_seconds=self.batch_seconds,
            sequential_seconds=self.sequential_seconds,
            batch_tokens_per_s=self.batch_tokens_per_s,
            sequential_tokens_per_s=self.sequential_tokens_per_s,
            ratio=self.ratio,
        )
        return d


def measure_throughput(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    technique: Technique,
    new_tokens: int,
    *,
    baseline_model: Any = None,
    rounds: int = 3,
    warmup: int = 0,
    overrides: Mapping[str, Any] | None = None,
    memory: dict[str, int] | None = None,
    drive: Driver | None = None,
) -> ThroughputResult:
    """Time ``generate_batch`` on ``prompts`` against ``generate`` on each prompt alone (``baseline_model``, default
    the same model, run with :func:`plain_attention`) in alternating rounds (:func:`pytest_infer.measure.paired_rounds`,
    its ``drive``), after one untimed call of each side (the batching one under the memory probes when ``memory``
    is given: its peak device memory and host RSS go there) and ``warmup`` more. ``overrides`` change the
    ContinuousBatchingConfig (a perf run wants a budget larger than the tests' :data:`CB_BUDGET`; it stays
    explicit). Tokens are counted from what each side returned; a batching run with problems (missing request,
    wrong attention) raises :class:`BatchingError`."""
    import torch

    from pytest_infer.generation import greedy_generate
    from pytest_infer.measure import Timer, loop_driver, memory_round, paired_rounds
    from pytest_infer.models import encode

    if rounds < 1:
        raise ValueError("measure_throughput needs at least one round")
    device = str(model.device)
    _, budget = _config_for(technique, device, overrides)  # refuse an implicit budget before any timing
    baseline = model if baseline_model is None else baseline_model
    inputs = [list(tokenizer(p)["input_ids"]) for p in prompts]
    rows = [encode(tokenizer, [p], str(baseline.device)) for p in prompts]
    # the same context, without the batching runner and its ContinuousBatchingConfig overrides
    sequential_technique = Technique(name=f"{technique.name}-sequential", family="custom", context=technique.context)
    counts = {"batch": 0, "sequential": 0}

    def batch() -> None:
        run = run_generate_batch(model, tokenizer, inputs, technique, new_tokens, overrides=overrides)
        run.raise_for_problems()
        counts["batch"] = sum(len(t or []) for t in run.tokens)

    def sequential() -> None:
        with torch.no_grad(), plain_attention(baseline):
            outs = [
                greedy_generate(baseline, tokenizer, row, sequential_technique, new_tokens, scores=False)
                for row in rows
            ]
        counts["sequential"] = sum(len(o.tokens[0]) for o in outs)

    timer = Timer(device)
    sequential()
    probed, _ = memory_round(batch, device, timer)
    if memory is not None:
        memory.update(probed)
    seq_s, batch_s = paired_rounds(sequential, batch, timer, rounds, warmup, drive=drive or loop_driver)
    return ThroughputResult(
        technique=technique.name,
        device=device,
        requests=len(prompts),
        new_tokens=new_tokens,
        rounds=rounds,
        batch_tokens=counts["batch"],
        sequential_tokens=counts["sequential"],
        batch_s=batch_s,
        sequential_s=seq_s,
        budget=budget,
    )
