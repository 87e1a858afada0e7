"""Where did it part? Re-run reference and candidate with hooks on the decoder layers and their parts
(attention, MLP, norms) and name the first whose hidden states differ beyond the noise.

The threshold of each module is ``max(FLOOR_MULTIPLE x its own dtype noise, MIN_RELATIVE[dtype])``:
the dtype noise is the same module's error when the *reference* runs in the candidate's dtype, so a
bfloat16 candidate is not blamed for bfloat16 itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pytest_infer.core.technique import Technique
from pytest_infer.parity.floor import FLOOR_MULTIPLE
from pytest_infer.runtime.batch import Batch, forward_logits

if TYPE_CHECKING:
    import torch


MIN_RELATIVE = {"float32": 1e-4, "bfloat16": 1e-2, "float16": 2e-3}


def decoder_layers(model: Any) -> tuple[str, list[Any]]:
    """The name prefix and modules of the decoder-layer stack: the longest ModuleList of same-class modules."""
    import torch

    best: tuple[str, list[Any]] = ("", [])
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best[1]):
            kinds = {type(m) for m in module}
            if len(kinds) == 1:
                best = (name, list(module))
    if not best[1]:
        raise ValueError("no decoder-layer ModuleList found in the model")
    return best


def _first_tensor(output: Any) -> torch.Tensor | None:
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


@contextmanager
def capture(model: Any) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of every decoder layer and of each of its direct children, in call order."""
    prefix, layers = decoder_layers(model)
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name: str) -> Any:
        def record(_module: Any, _inputs: Any, output: Any) -> None:
            t = _first_tensor(output)
            if t is not None and name not in seen:
                seen[name] = t.detach().float().cpu()

        return record

    for i, layer in enumerate(layers):
        for child_name, child in layer.named_children():
            handles.append(child.register_forward_hook(hook(f"{prefix}.{i}.{child_name}")))
        handles.append(layer.register_forward_hook(hook(f"{prefix}.{i}")))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _run(model: Any, technique: Technique, batch: Batch) -> dict[str, torch.Tensor]:

    with capture(model) as seen:
        forward_logits(model, batch, technique)
    return dict(seen)


def _relative(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    if a.shape != b.shape or a.dim() < 2:
        return float("nan")
    if a.dim() == 3 and a.shape[:2] == mask.shape:
        a, b = a[mask], b[mask]
    denom = float(a.norm()) or 1.0
    return float((a - b).norm()) / denom


def first_divergence(
    reference: Any,
    reference_technique: Technique,
    candidate: Any,
    candidate_technique: Technique,
    batch: Batch,
    dtype: str,
    reference_in_dtype: Any | None = None,
) -> str:
    """One or two lines naming the first module whose output parts beyond its threshold."""
    ref = _run(reference, reference_technique, batch)
    cand = _run(candidate, candidate_technique, batch)
    noise = _run(reference_in_dtype, reference_technique, batch) if reference_in_dtype is not None else {}
    mask = batch.attention_mask.bool().cpu()
    floor_rel = MIN_RELATIVE.get(dtype, 1e-4)
    worst_before = 0.0
    for name, r in ref.items():
        if name not in cand:
            continue
        err = _relative(r, cand[name], mask)
        threshold = max(FLOOR_MULTIPLE * _relative(r, noise[name], mask), floor_rel) if name in noise else floor_rel
        is_layer = name.rsplit(".", 1)[-1].isdigit()
        if err == err and err > threshold:  # not NaN and beyond
            layer = name if is_layer else name.rsplit(".", 1)[0]
            part = "" if is_layer else name.rsplit(".", 1)[1]
            where = f"first diverging layer: {layer}"
            where += f" (in its {part})" if part else " (its own output: none of its parts parted first)"
            return (
                f"{where}: relative error {err:.3g} > threshold {threshold:.3g}; "
                f"every module before it stayed within {worst_before:.3g}"
            )
        if err != err:
            return f"first diverging layer: {name}: its output is not finite or changed shape"
        worst_before = max(worst_before, err)
    return f"no decoder layer parted beyond its threshold (largest relative error {worst_before:.3g}): the divergence is after the decoder layers (final norm or lm_head)"
