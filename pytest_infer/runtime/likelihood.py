"""How likely a model finds a text: the negative log-likelihood of each chunk of a text, by one batched forward
(weights), or token by token through ``generate`` with the technique's cache (KV caches: the cache is read only when
decoding, so that is where its cost shows)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_infer.core.technique import Technique, resolve_kwargs
from pytest_infer.runtime.generated import never_token

if TYPE_CHECKING:
    import torch

CHUNK_TOKENS = 128
MAX_CHUNKS = 21
PREFILL_TOKENS = 16  # decode mode: the prompt of each chunk; the rest is predicted one decode step at a time
DECODE_STEPS = 64  # decode mode: tokens scored per chunk (past the quantized cache's residual window)
FORWARD_ROWS = 4  # chunks per forward: bounds the [rows, 128, vocab] logits at real vocabulary sizes


@dataclass(frozen=True)
class Chunks:
    """The text cut into rows of ``CHUNK_TOKENS`` token ids (no special tokens), each scored on its own."""

    ids: torch.Tensor  # [n, CHUNK_TOKENS]
    source: str  # where the text came from (for the report)
    tokens: int  # tokens of the text that the chunks cover


def text_chunks(tokenizer: Any, text: str, source: str, device: str, max_chunks: int = MAX_CHUNKS) -> Chunks:
    """``text`` tokenized and cut into at most ``max_chunks`` chunks of ``CHUNK_TOKENS`` tokens (the tail dropped)."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = min(max_chunks, len(ids) // CHUNK_TOKENS)
    if n < 2:
        raise ValueError(
            f"the quality text {source} has {len(ids)} tokens: at least {2 * CHUNK_TOKENS} are needed "
            f"(two chunks of {CHUNK_TOKENS}, for an interval), a few thousand for a useful one"
        )
    tensor = torch.tensor(ids[: n * CHUNK_TOKENS], device=device).view(n, CHUNK_TOKENS)
    return Chunks(tensor, source, n * CHUNK_TOKENS)


def _mean_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per row of ``targets`` under ``logits`` [rows, positions, vocab] (float32)."""
    import torch

    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double().mean(-1)


def forward_nll(model: Any, chunks: Chunks, technique: Technique) -> torch.Tensor:
    """Per chunk, the mean NLL of tokens 2..N given the ones before (teacher forcing, one forward per few chunks)."""
    import torch

    out = []
    with technique.no_grad(), technique.active():
        for start in range(0, chunks.ids.shape[0], FORWARD_ROWS):
            ids = chunks.ids[start : start + FORWARD_ROWS]
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            out.append(_mean_nll(logits[:, :-1], ids[:, 1:]).cpu())
    return torch.cat(out)


def decode_nll(
    model: Any, tokenizer: Any, chunks: Chunks, technique: Technique, steps: int = DECODE_STEPS
) -> torch.Tensor:
    """Per chunk, the mean NLL of ``steps`` tokens predicted one decode step at a time through ``generate`` with the
    technique's generation arguments (its cache), each step fed the text's own token (a logits processor forces it);
    the first ``PREFILL_TOKENS`` tokens are the prompt. The checkpoint's own generation config is not used: no
    repetition penalty or suppressed token changes the scores."""
    import torch
    from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

    ids = chunks.ids
    steps = min(steps, ids.shape[1] - PREFILL_TOKENS)
    targets = ids[:, PREFILL_TOKENS : PREFILL_TOKENS + steps]
    total = torch.zeros(ids.shape[0], dtype=torch.float64, device=ids.device)

    class Forced(LogitsProcessor):  # type: ignore[misc]
        """Scores the text's next token under the raw logits, then makes it the only choice."""

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            nonlocal total
            step = input_ids.shape[1] - PREFILL_TOKENS
            target = targets[:, step : step + 1]
            logprob = torch.log_softmax(scores.float(), dim=-1).gather(-1, target).squeeze(-1)
            total = total - logprob.double()
            forced = torch.full_like(scores, float("-inf"))
            return forced.scatter(-1, target, 0.0)

    config = GenerationConfig(  # eos: an id no token has, so every chunk decodes all its steps
        max_new_tokens=steps,
        do_sample=False,
        eos_token_id=never_token(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    kwargs = resolve_kwargs(technique.generate_kwargs, needed_length=PREFILL_TOKENS + steps, device=str(ids.device))
    prompt = ids[:, :PREFILL_TOKENS]
    with technique.no_grad(), technique.active():
        model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            generation_config=config,
            logits_processor=LogitsProcessorList([Forced()]),
            **kwargs,
        )
    return (total / steps).cpu()
