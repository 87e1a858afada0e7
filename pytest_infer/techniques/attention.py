"""Attention backends: ``attn_implementation=`` in ``from_pretrained``, and SDPA backend pinning.

Each built-in states what it sets and what it needs; :func:`attention_function_technique` turns any
attention function into a technique registered through Transformers' ``AttentionInterface``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from pytest_infer.core.dtypes import half_only, half_only_on
from pytest_infer.core.model_facts import ModelFacts
from pytest_infer.core.probe import Probe
from pytest_infer.core.requirements import Requirements
from pytest_infer.core.stack import Stack
from pytest_infer.core.technique import Technique


def _sdpa_backend(name: str) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    def context() -> contextlib.AbstractContextManager[Any]:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([getattr(SDPBackend, name)])

    return context


def _cuda_capability(minimum: tuple[int, int], what: str) -> Callable[[Stack], str | None]:
    def check(stack: Stack) -> str | None:
        if stack.device_kind != "cuda" or stack.compute_capability is None:
            return None
        if tuple(stack.compute_capability) < minimum:
            found = ".".join(map(str, stack.compute_capability))
            return f"{what} needs compute capability >= {minimum[0]}.{minimum[1]}, found {found}"
        return None

    return check


def _attn(name: str, impl: str, description: str, **kw: Any) -> Technique:
    kw.setdefault("effective_attention", frozenset({impl}))
    return Technique(
        name=name,
        family="attention",
        description=description,
        load_kwargs={"attn_implementation": impl},
        **kw,
    )


def _flash_backend_applies(facts: ModelFacts, stack: Stack) -> str | None:
    """SDPA's flash backend needs as many key/value heads as query heads unless the call asks for grouped-query
    attention (Transformers' interface does; a model that calls SDPA itself, like Falcon, may not), and on cuda it
    takes no attention mask (an ALiBi bias is one)."""
    if facts.calls_sdpa_itself and facts.kv_heads and facts.kv_heads != facts.heads:
        return (
            f"{facts.class_name} calls SDPA itself with {facts.kv_heads} key/value heads for {facts.heads} query heads "
            "and no enable_gqa: the flash backend needs equal head counts ('No available kernel')"
        )
    if stack.device_kind == "cuda" and facts.alibi:
        return f"{facts.class_name} passes its ALiBi bias as an attention mask; the CUDA flash backend takes no mask"
    return None


def builtin() -> list[Technique]:
    cuda_only = frozenset({"cuda"})
    return [
        _attn("eager", "eager", "plain PyTorch attention (matmul + softmax): the reference"),
        _attn("sdpa", "sdpa", "torch.nn.functional.scaled_dot_product_attention, backend chosen by torch"),
        _attn(
            "sdpa_math",
            "sdpa",
            "SDPA pinned to the math backend (sdpa_kernel(SDPBackend.MATH))",
            context=_sdpa_backend("MATH"),
        ),
        _attn(
            "sdpa_flash",
            "sdpa",
            "SDPA pinned to the FlashAttention-2 backend (no attention mask: prompts run unpadded)",
            context=_sdpa_backend("FLASH_ATTENTION"),
            requirements=Requirements(
                device_kinds=frozenset({"cpu", "cuda"}),
                custom=(_cuda_capability((8, 0), "the SDPA flash backend"),),
            ),
            dtype_check=half_only_on("cuda", "the SDPA flash backend"),
            padded_batches=False,
            applies=_flash_backend_applies,
        ),
        _attn(
            "sdpa_efficient",
            "sdpa",
            "SDPA pinned to the memory-efficient backend",
            context=_sdpa_backend("EFFICIENT_ATTENTION"),
            requirements=Requirements(device_kinds=cuda_only),
        ),
        _attn(
            "sdpa_cudnn",
            "sdpa",
            "SDPA pinned to the cuDNN backend (prompts run unpadded)",
            context=_sdpa_backend("CUDNN_ATTENTION"),
            requirements=Requirements(
                device_kinds=cuda_only, custom=(_cuda_capability((8, 0), "the SDPA cuDNN backend"),)
            ),
            dtype_check=half_only("the SDPA cuDNN backend"),
            padded_batches=False,
        ),
        _attn(
            "flex_attention",
            "flex_attention",
            "torch.nn.attention.flex_attention (compiled by torch on first use)",
            requirements=Requirements(packages=(("torch", ">=2.5"),)),
        ),
        _attn(
            "flash_attention_2",
            "flash_attention_2",
            "FlashAttention-2 from the flash-attn package",
            requirements=Requirements(
                device_kinds=cuda_only,
                packages=(("flash-attn", ">=2.3.3"),),
                custom=(_cuda_capability((8, 0), "flash_attention_2"),),
            ),
            dtype_check=half_only("flash_attention_2"),
        ),
        _attn(
            "flash_attention_3",
            "flash_attention_3",
            "FlashAttention-3 (Hopper) from the flash-attn-3 package",
            requirements=Requirements(
                device_kinds=cuda_only,
                packages=(("flash-attn-3", ""),),
                custom=(_cuda_capability((9, 0), "flash_attention_3"),),
            ),
            dtype_check=half_only("flash_attention_3"),
        ),
        _attn(
            "flash_attention_4",
            "flash_attention_4",
            "FlashAttention-4 (CuTe DSL; Hopper and Blackwell) from the flash-attn-4 package",
            requirements=Requirements(
                device_kinds=cuda_only,
                packages=(("flash-attn-4", ""),),
                custom=(_cuda_capability((9, 0), "flash_attention_4"),),
            ),
            dtype_check=half_only("flash_attention_4"),
        ),
    ]


def attention_function_technique(
    name: str,
    function: Callable[..., Any],
    *,
    description: str = "",
    requirements: Requirements | None = None,
    mask: str | Callable[..., Any] | None = "sdpa",
    probe: Probe | bool = True,
    **kwargs: Any,
) -> Technique:
    """A technique for an attention function registered through Transformers' ``AttentionInterface``.

    ``function`` has the signature of ``transformers.integrations.sdpa_attention.sdpa_attention_forward``:
    ``(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs) -> (out, weights)``.

    ``mask`` is registered for the same name through ``AttentionMaskInterface``: the name of a built-in
    mask format ("sdpa", "eager", "flex_attention", ...) or a mask function. Transformers gives an attention
    name with no registered mask **no mask at all** (meant for servers that mask on their own), so padded
    batches would silently attend to padding; ``mask=None`` keeps that behaviour on purpose.

    ``probe``: proof that ``function`` ran. By default the function is registered counted, and a run of the model in
    which it was called less than once per forward fails naming it (a name that Transformers resolved to another
    attention would otherwise pass, bit-identical to that one). Give your own :class:`~pytest_infer.core.probe.Probe`
    to expect more (``Probe("my kernel", per_forward=num_layers)``: one call per layer), or ``probe=False`` for none
    (then declare your own with ``probes=(...)``, e.g. on a kernel that ``function`` calls).

    Example (in a model repository's conftest.py)::

        def pytest_infer_register_techniques(registry):
            registry.add(attention_function_technique("my_attention", my_attention_forward))
    """

    if probe is True:
        probe = Probe(f"attention function {getattr(function, '__qualname__', function)!r}", per_forward=1)
    registered = probe.count(function) if isinstance(probe, Probe) else function

    def setup() -> None:
        from transformers import AttentionInterface

        AttentionInterface.register(name, registered)
        if mask is not None:
            from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[mask] if isinstance(mask, str) else mask)

    return Technique(
        name=name,
        family="attention",
        description=description or f"attention function {getattr(function, '__qualname__', function)!r}",
        load_kwargs={"attn_implementation": name},
        requirements=requirements or Requirements(),
        setup=setup,
        effective_attention=frozenset({name}),
        probes=(*((probe,) if isinstance(probe, Probe) else ()), *kwargs.pop("probes", ())),
        **kwargs,
    )
