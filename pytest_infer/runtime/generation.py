"""Greedy-generation parity: token by token against the reference, tolerant only of measured near-ties.

:func:`greedy_generate` runs ``generate`` (or ``generate_batch`` for continuous-batching techniques)
for a forced number of new tokens and records, for each step, the chosen token and the top-1/top-2
margin of the scores it was chosen from. :func:`compare_generations` walks candidate and reference
together: at the first differing token the divergence is accepted only when the reference's margin
there is below the near-tie threshold (rounding can flip a near-tie; comparison stops there and says
so); anything else fails with the step, both tokens, both margins and the text so far.
"""

from __future__ import annotations

from typing import Any

from pytest_infer.core.technique import Technique
from pytest_infer.runtime.batch import Batch
from pytest_infer.runtime.continuous_batching import generate_batch
from pytest_infer.runtime.generated import Generated, forced_generate, join_generated, step_margins


def greedy_generate(
    model: Any, tokenizer: Any, batch: Batch, technique: Technique, new_tokens: int, *, scores: bool = True
) -> Generated:
    """Greedy ``generate`` of exactly ``new_tokens`` tokens per prompt.

    The length is forced by an end-of-sequence id that no token can have (:func:`forced_generate`).
    """

    if technique.runner == "generate_batch":
        return generate_batch(model, tokenizer, batch, technique, new_tokens)
    if not technique.padded_batches and batch.input_ids.shape[0] > 1:
        # kernels without mask support (SDPA flash/cuDNN pinned): each prompt alone, unpadded
        return join_generated(
            [greedy_generate(model, tokenizer, one, technique, new_tokens, scores=scores) for one in batch.rows()]
        )

    out = forced_generate(model, tokenizer, batch, technique, new_tokens, output_scores=scores)
    prompt_len = batch.input_ids.shape[1]
    tokens = out.sequences[:, prompt_len:].tolist()
    return Generated(tokens, step_margins(out.scores) if scores else None)
