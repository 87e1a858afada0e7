"""Continuous batching (``model.generate_batch``, the long-lived manager) run under watch.

:func:`run_generate_batch` and :func:`run_manager` hand Transformers an explicit KV budget (:data:`CB_BUDGET`; the
defaults size the cache from free device memory, system RAM on CPU) and record every forward the batching loop
makes: the attention implementation that ran, the paged cache and its size, the tokens per forward. A
:class:`BatchRun` then says what went wrong beside the tokens: a request missing or failed, results out of input
order, another attention than the one requested, a forward over the token budget, the model's attention left
switched afterwards.

The checks (:mod:`pytest_infer.checks.batching`) compare each request with the reference; the throughput is timed
in :mod:`pytest_infer.perf.throughput`. Nothing here imports torch or Transformers at module level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_infer.core.technique import Lazy, Technique, resolve_kwargs
from pytest_infer.runtime.batch import Batch
from pytest_infer.runtime.generated import Generated, never_token

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
            "from free device memory (system RAM on CPU); set them explicitly (pytest_infer.runtime.continuous_batching.cb_config)"
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


def batching_config(
    technique: Technique, device: str, overrides: Mapping[str, Any] | None = None
) -> tuple[Any, dict[str, int]]:
    """The ContinuousBatchingConfig of a run: the explicit budget, the technique's ``generate_kwargs``, then
    ``overrides``; refused when the budget is left to Transformers."""

    config = cb_config(**{**resolve_kwargs(technique.generate_kwargs, device=device), **(overrides or {})})
    return config, require_explicit_budget(config)


def _generation_config(model: Any, tokenizer: Any, new_tokens: int) -> Any:
    from transformers import GenerationConfig

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

    config, budget = batching_config(technique, str(model.device), overrides)
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

    config, budget = batching_config(technique, str(model.device))
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


def cb_config(**overrides: Any) -> Any:
    """A ``ContinuousBatchingConfig`` with the KV budget set explicitly (:data:`CB_BUDGET`:
    left unset, Transformers sizes the cache from free device memory, system RAM on CPU), flash never switched in
    behind the technique's back (``auto_switch_to_flash=False``), no prefix sharing and no CUDA graphs.

    ``overrides`` are config fields (a technique's ``generate_kwargs``); an override that unsets the budget is
    refused by :func:`require_explicit_budget` before any run.
    """
    from transformers.generation import configuration_utils as cu

    fields = {f.name for f in dataclasses.fields(cu.ContinuousBatchingConfig)}
    values: dict[str, Any] = {
        "num_blocks": CB_BUDGET["num_blocks"],
        "max_batch_tokens": CB_BUDGET["max_batch_tokens"],
        "auto_switch_to_flash": False,
        "allow_block_sharing": False,
        "use_cuda_graph": False,
    }
    # Transformers < 5.17 calls the page size block_size
    values["page_size" if "page_size" in fields else "block_size"] = CB_BUDGET["page_size"]
    if "page_size" not in fields and "page_size" in overrides:
        overrides = {**overrides, "block_size": overrides["page_size"]}
        del overrides["page_size"]
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(
            f"not ContinuousBatchingConfig fields: {', '.join(sorted(unknown))} (Transformers' fields: "
            f"{', '.join(sorted(fields))})"
        )
    values.update(overrides)
    return cu.ContinuousBatchingConfig(**{k: v for k, v in values.items() if k in fields})


def generate_batch(model: Any, tokenizer: Any, batch: Batch, technique: Technique, new_tokens: int) -> Generated:
    """Continuous batching: ``model.generate_batch`` over the unpadded prompts, tokens per request in input order.

    Runs through :func:`run_generate_batch`, which sets the KV budget explicitly and watches
    every forward; a missing or failed request, results out of input order, an attention implementation other than
    the one requested, a forward over the token budget or an attention implementation left switched afterwards
    raise :class:`BatchingError` naming the request (no parity verdict on such a run).
    """

    inputs = [
        ids[mask.bool()].tolist() for ids, mask in zip(batch.input_ids.cpu(), batch.attention_mask.cpu(), strict=False)
    ]
    run = run_generate_batch(model, tokenizer, inputs, technique, new_tokens)
    run.raise_for_problems()
    return Generated([list(t or []) for t in run.tokens], None)
