"""Attention functions from kernel repositories (local or hub) through Transformers' ``AttentionInterface``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_infer.core.dtypes import half_only
from pytest_infer.core.requirements import Requirements
from pytest_infer.core.technique import Technique
from pytest_infer.techniques.kernels.common import (
    KERNELS,
    _capability,
    _devices,
    _hub,
    _resolved_revision,
    _source,
    _transformers_integration,
)
from pytest_infer.techniques.kernels.support import (
    HubRef,
    add_provenance,
    is_within,
    pin_check,
    repository_digest,
    warn_unpinned,
)
from pytest_infer.techniques.kernels.watch import KernelWatch, fail


def local_attention_technique(
    name: str,
    repository: str | Path,
    *,
    function: str = "attention",
    mask: str = "eager",
    description: str = "",
    requirements: Requirements | None = None,
    **kwargs: Any,
) -> Technique:
    """The attention function ``function`` of the local kernel repository at ``repository``, registered
    through Transformers' ``AttentionInterface`` under ``name`` (with the ``mask`` format: a registered
    name without one gets no mask at all, so padded rows would attend to padding)."""
    path = Path(repository).resolve()
    watch = KernelWatch(name, "attention", f"attention {path.name}:{function} (local, {path})")
    state: dict[str, Any] = {}

    def setup() -> None:
        from kernels import get_local_kernel
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

        kernel = get_local_kernel(path)
        fn = getattr(kernel, function, None)
        if not callable(fn):
            raise AttributeError(f"{name}: kernel repository {path} exposes no function {function!r}")
        if not is_within(_source(fn), path):
            fail(
                f"{name}: requested {watch.requested}, but kernels loaded {function} from {_source(fn)}, outside "
                "that repository: two kernel repositories share a metadata id"
            )
        if state.get("kernel") is not fn:
            state.update(kernel=fn, counted=watch.counting(fn))
        AttentionInterface.register(name, state["counted"])
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[mask])

    def prepare(model: Any) -> Any:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        impl = model.config._attn_implementation
        watch.watch_attention(model, ALL_ATTENTION_FUNCTIONS.get(impl), state["kernel"])
        digest = repository_digest(path)
        add_provenance(
            model,
            {
                "technique": name,
                "kind": "local",
                "repository": str(path),
                "function": function,
                "digest": digest,
                "summary": f"attention function {function!r} from local repository {path} ({digest[:19]}), mask format {mask}",
            },
        )
        return model

    return Technique(
        name=name,
        family="kernels",
        description=description or f"attention function {function} of the local kernel repository {path.name}",
        load_kwargs={"attn_implementation": name},
        requirements=requirements or Requirements(packages=(KERNELS,)),
        setup=setup,
        prepare=prepare,
        probes=(watch,),
        effective_attention=frozenset({name}),
        **kwargs,
    )


def hub_attention_technique(
    name: str,
    repo_id: str,
    *,
    revision: str | None = None,
    version: int | None = None,
    min_capability: tuple[int, int] = (8, 0),
    description: str = "",
    **kwargs: Any,
) -> Technique:
    """``attn_implementation="<repo_id>@<revision>"``: Transformers loads the hub attention kernel itself.
    Needs Transformers' kernels version range, CUDA, and the snapshot cached or the hub reachable."""
    ref = HubRef(repo_id, revision=revision, version=version)
    impl = f"{repo_id}@{ref.ref}"
    watch = KernelWatch(name, "attention", f"attention {impl} (hub, through Transformers)")

    def setup() -> None:
        warn_unpinned(ref, name)

    def prepare(model: Any) -> Any:
        from transformers import AttentionInterface
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        registered = ALL_ATTENTION_FUNCTIONS.get(impl)
        if registered is not None and getattr(registered, "__infer_kernel_watch__", None) is not watch:
            AttentionInterface.register(impl, watch.counting(registered))
        counted = ALL_ATTENTION_FUNCTIONS.get(impl)
        watch.watch_attention(model, counted, getattr(counted, "__wrapped__", None))
        resolved = _resolved_revision(repo_id)
        add_provenance(
            model,
            {
                "technique": name,
                "kind": "hub",
                "repository": repo_id,
                "requested_revision": ref.ref,
                "resolved_revision": resolved,
                "pinned": ref.pinned,
                "summary": f"attention from hub {ref} (resolved {resolved}) through Transformers",
            },
        )
        return model

    return Technique(
        name=name,
        family="kernels",
        description=description or f"attn_implementation={impl!r}: Transformers loads the hub kernel",
        load_kwargs={"attn_implementation": impl},
        requirements=Requirements(
            packages=(KERNELS,),
            custom=(
                _transformers_integration,
                _devices(("cuda",), f"hub kernel {repo_id}"),
                _capability(min_capability, f"hub kernel {repo_id}"),
                _hub(ref),
            ),
            strict=(pin_check(ref),),
        ),
        dtype_check=half_only(f"hub kernel {repo_id}"),
        setup=setup,
        prepare=prepare,
        probes=(watch,),
        effective_attention=frozenset({impl}),
        **kwargs,
    )
