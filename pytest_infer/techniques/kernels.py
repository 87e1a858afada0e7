"""Hub and local kernels through the ``kernels`` library (``kernelize`` with a kernel mapping), and
through Transformers' own kernels integration (``use_kernels=True``, ``attn_implementation="org/repo@rev"``).

Every technique here proves that the kernel requested is the one that ran (see
:class:`pytest_infer.kernels_support.KernelWatch`) and records where the kernel came from on the model
(local path + content hash, or hub repository + resolved revision).

Factories for your own kernels (in a model repository's conftest.py)::

    from pytest_infer.techniques.kernels import hub_layer_technique, local_layer_technique

    def pytest_infer_register_techniques(registry):
        registry.add(local_layer_technique("my_rmsnorm", "kernels/my-norm", layer="RMSNorm"))
        registry.add(hub_layer_technique("hub_norm", "kernels-community/liger-kernels",
                                         layer="LigerRMSNorm", revision="<40-hex commit>"))
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_infer.kernels_support import (
    KERNEL_DEVICES,
    HubRef,
    KernelWatch,
    add_provenance,
    cached_snapshot,
    fixture_repository,
    hub_availability_reason,
    is_within,
    kernels_drift_reason,
    pin_check,
    repository_digest,
    transformers_kernel_devices,
    warn_unpinned,
)
from pytest_infer.stack import Requirements, Stack
from pytest_infer.technique import Lazy, Technique

KERNELS = ("kernels", ">=0.17")
HALF = ("float16", "bfloat16")
# Hub kernels of the built-ins. A commit pins; a version (branch vN) moves and is refused under --infer-strict.
FLASH_ATTN2 = HubRef("kernels-community/flash-attn2", revision="81fb77c12b2ad5d69380669b46739d5868614502")
LIGER_RMSNORM = HubRef("kernels-community/liger-kernels", version=3)  # Transformers' own mapping uses v3


# --- requirements --------------------------------------------------------------------------------


def _transformers_integration(stack: Stack) -> str | None:
    return kernels_drift_reason(stack)


def _devices(kinds: tuple[str, ...], what: str) -> Callable[[Stack], str | None]:
    def device_kind(stack: Stack) -> str | None:
        if stack.device_kind not in kinds:
            return f"{what} needs a {' or '.join(kinds)} device, running on {stack.device_kind}"
        return None

    return device_kind


def _transformers_kernel_device(stack: Stack) -> str | None:
    kinds = transformers_kernel_devices()
    if stack.device_kind not in kinds:
        return f"Transformers' KernelConfig maps kernels for {', '.join(kinds)} only, not {stack.device_kind}"
    return None


def _capability(minimum: tuple[int, int], what: str) -> Callable[[Stack], str | None]:
    def capability(stack: Stack) -> str | None:
        cc = stack.compute_capability
        if stack.device_kind == "cuda" and cc is not None and tuple(cc) < minimum:
            return f"{what} needs compute capability >= {minimum[0]}.{minimum[1]}, found {cc[0]}.{cc[1]}"
        return None

    return capability


def _hub(ref: HubRef) -> Callable[[Stack], str | None]:
    def hub_kernel_available(stack: Stack) -> str | None:
        return hub_availability_reason(ref)

    return hub_kernel_available


def _half_only(what: str) -> Callable[[str, str], str | None]:
    def check(device_kind: str, dtype: str) -> str | None:
        return None if dtype in HALF else f"{what} runs float16/bfloat16 only, not {dtype}"

    return check


# --- layers through kernelize --------------------------------------------------------------------


def _model_device(model: Any) -> str:
    import torch

    kind = next(model.parameters()).device.type
    return "rocm" if kind == "cuda" and torch.version.hip else kind


def _loaded_layer(repo: Any, local: bool) -> Any:
    """The layer class ``kernelize`` loaded for ``repo`` (None when it never loaded it)."""
    from kernels.layer import layer as kernels_layer

    cached = getattr(kernels_layer, "_CACHED_LAYER", {}).get(repo)
    if cached is None and local:
        cached = repo.load()  # a local load needs no network: lets the check name what should have run
    return cached


def _kernelize(
    technique: str,
    kernel_layer: str,
    make_repo: Callable[[], Any],
    devices: tuple[str, ...],
    watch: KernelWatch,
    provenance: Callable[[Any, Any], dict[str, Any]],
    local: bool,
    root: Callable[[], Path | None],
) -> Callable[[Any], Any]:
    """``prepare``: register the model's ``kernel_layer`` classes, kernelize under a mapping of exactly
    this repository, then check that every such module runs the repository's layer (and that the layer
    class was imported from that repository: ``root``, the local path or the hub snapshot)."""

    def prepare(model: Any) -> Any:
        from kernels import Mode, kernelize, use_kernel_mapping

        from pytest_infer.kernels_support import ensure_kernel_layers

        registered_here = ensure_kernel_layers(model, kernel_layer)
        repo = make_repo()
        with use_kernel_mapping({kernel_layer: dict.fromkeys(devices, repo)}, inherit_mapping=False):
            kernelize(model, mode=Mode.INFERENCE)
        layer_cls = _loaded_layer(repo, local=local)
        where = root()
        if layer_cls is not None and where is not None and not is_within(_source(layer_cls), where):
            from pytest_infer.kernels_support import fail

            fail(
                f"{technique}: requested {watch.requested}, but kernels loaded {layer_cls.__qualname__} from "
                f"{_source(layer_cls)}, outside that repository: two kernel repositories share the metadata id "
                f"{layer_cls.__module__.split('.')[0]!r} and kernels imported the other one's modules (give each "
                "repository its own id in build/<variant>/metadata.json)"
            )
        device = _model_device(model)
        if device not in devices:
            diagnosis = (
                f"the kernel mapping has no entry for device {device!r} (mapped: {', '.join(devices)}); "
                "kernels falls back to the original forward silently"
            )
        else:
            diagnosis = (
                "the mapping matched but kernels kept the original forward (the repository offers no layer for "
                "inference mode, or its loading failed under a fallback)"
            )
        count = watch.watch_layers(model, kernel_layer, getattr(layer_cls, "forward", None), diagnosis)
        entry = provenance(repo, layer_cls)
        entry.update(technique=technique, kernel_layer=kernel_layer, modules=count)
        if registered_here:
            entry["registered_by_pytest_infer"] = registered_here
        entry["summary"] += f"; {count} {kernel_layer} modules kernelized"
        add_provenance(model, entry)
        return model

    return prepare


def _source(obj: Any) -> str:
    import inspect

    try:
        return inspect.getfile(obj)
    except TypeError:
        return "<unknown>"


def _local_provenance(path: Path, layer: str) -> Callable[[Any, Any], dict[str, Any]]:
    def provenance(repo: Any, layer_cls: Any) -> dict[str, Any]:
        digest = repository_digest(path)
        return {
            "kind": "local",
            "repository": str(path),
            "layer": layer,
            "digest": digest,
            "summary": f"layer {layer} from local repository {path} ({digest[:19]})",
        }

    return provenance


def local_layer_technique(
    name: str,
    repository: str | Path,
    *,
    layer: str = "RMSNorm",
    kernel_layer: str = "RMSNorm",
    devices: tuple[str, ...] = KERNEL_DEVICES,
    description: str = "",
    requirements: Requirements | None = None,
    **kwargs: Any,
) -> Technique:
    """Kernelize the model's ``kernel_layer`` modules (e.g. Transformers' RMSNorm classes, declared
    ``@use_kernel_forward_from_hub("RMSNorm")``) with layer ``layer`` of the local kernel repository at
    ``repository`` (the hub's layout: ``build/<variant>/<package>/``), mapped for ``devices``."""
    path = Path(repository).resolve()
    watch = KernelWatch(name, "layer", f"kernel layer {kernel_layer} <- {path.name}:{layer} (local, {path})")

    def make_repo() -> Any:
        from kernels import LocalLayerRepository

        return LocalLayerRepository(repo_path=path, layer_name=layer)

    return Technique(
        name=name,
        family="kernels",
        description=description or f"kernelize {kernel_layer} with {layer} of the local kernel repository {path.name}",
        requirements=requirements or Requirements(packages=(KERNELS,)),
        prepare=_kernelize(
            name, kernel_layer, make_repo, devices, watch, _local_provenance(path, layer), True, lambda: path
        ),
        context=watch.context,
        **kwargs,
    )


def hub_layer_technique(
    name: str,
    repo_id: str,
    *,
    layer: str,
    revision: str | None = None,
    version: int | None = None,
    kernel_layer: str = "RMSNorm",
    devices: tuple[str, ...] = ("cuda", "rocm"),
    description: str = "",
    requirements: Requirements | None = None,
    **kwargs: Any,
) -> Technique:
    """Kernelize ``kernel_layer`` modules with layer ``layer`` of hub repository ``repo_id`` at ``revision``
    (a 40-hex commit pins it) or ``version``. Unpinned: a warning, and refused under ``--infer-strict``.
    Needs the snapshot in the local cache or a reachable hub."""
    ref = HubRef(repo_id, revision=revision, version=version)
    watch = KernelWatch(name, "layer", f"kernel layer {kernel_layer} <- {ref}:{layer} (hub)")

    def make_repo() -> Any:
        from kernels import LayerRepository

        warn_unpinned(ref, name)
        return LayerRepository(repo_id=repo_id, layer_name=layer, revision=revision, version=version)

    def provenance(repo: Any, layer_cls: Any) -> dict[str, Any]:
        resolved = _resolved_revision(repo_id) or getattr(repo, "_resolve_revision", lambda: None)()
        snapshot = cached_snapshot(ref)
        return {
            "kind": "hub",
            "repository": repo_id,
            "layer": layer,
            "requested_revision": ref.ref,
            "resolved_revision": resolved,
            "pinned": ref.pinned,
            "snapshot": None if snapshot is None else str(snapshot),
            "summary": f"layer {layer} from hub {ref} (resolved {resolved})",
        }

    base = Requirements(
        device_kinds=frozenset(d for d in devices if d in ("cuda", "rocm", "xpu", "mps", "cpu")),
        packages=(KERNELS,),
        custom=(pin_check(ref), _hub(ref)),
    )
    return Technique(
        name=name,
        family="kernels",
        description=description or f"kernelize {kernel_layer} with {layer} of hub kernel {ref}",
        requirements=base if requirements is None else base.merge(requirements),
        prepare=_kernelize(
            name, kernel_layer, make_repo, devices, watch, provenance, False, lambda: cached_snapshot(ref)
        ),
        context=watch.context,
        **kwargs,
    )


def _resolved_revision(repo_id: str) -> str | None:
    """The revision ``kernels`` loaded ``repo_id`` at (from its registry of loaded kernels)."""
    from kernels import get_loaded_kernels

    for loaded in get_loaded_kernels():
        if loaded.repo_info is not None and loaded.repo_info.repo_id == repo_id:
            return str(loaded.repo_info.revision)
    return None


# --- attention functions -----------------------------------------------------------------------------


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
            from pytest_infer.kernels_support import fail

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
        context=watch.context,
        effective_attention=frozenset({name}),
        **kwargs,
    )


# --- Transformers' own integration ----------------------------------------------------------------------


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
                pin_check(ref),
                _hub(ref),
            ),
        ),
        dtype_check=_half_only(f"hub kernel {repo_id}"),
        setup=setup,
        prepare=prepare,
        context=watch.context,
        effective_attention=frozenset({impl}),
        **kwargs,
    )


def transformers_local_layer_technique(
    name: str,
    repository: str | Path,
    *,
    layer: str = "RMSNorm",
    kernel_layer: str = "RMSNorm",
    description: str = "",
    **kwargs: Any,
) -> Technique:
    """``from_pretrained(use_kernels=True, kernel_config=KernelConfig({kernel_layer: "<path>:<layer>"},
    use_local_kernel=True))``: Transformers kernelizes while loading. Needs Transformers' kernels version
    range and a device its ``KernelConfig`` maps (not cpu); no hub."""
    path = Path(repository).resolve()
    watch = KernelWatch(
        name, "layer", f"kernel layer {kernel_layer} <- {path.name}:{layer} (local, via use_kernels=True)"
    )

    def kernel_config() -> Any:
        from transformers import KernelConfig

        return KernelConfig({kernel_layer: f"{path}:{layer}"}, use_local_kernel=True)

    def prepare(model: Any) -> Any:
        from kernels import get_local_kernel

        layer_cls = getattr(get_local_kernel(path).layers, layer)
        count = watch.watch_layers(
            model,
            kernel_layer,
            layer_cls.forward,
            "Transformers' kernelize kept it (it falls back to the original forward on any loading error)",
        )
        digest = repository_digest(path)
        add_provenance(
            model,
            {
                "technique": name,
                "kind": "local",
                "repository": str(path),
                "layer": layer,
                "kernel_layer": kernel_layer,
                "digest": digest,
                "modules": count,
                "summary": f"layer {layer} from local repository {path} ({digest[:19]}) via use_kernels=True; "
                f"{count} {kernel_layer} modules kernelized",
            },
        )
        return model

    return Technique(
        name=name,
        family="kernels",
        description=description or f"use_kernels=True with {layer} of the local kernel repository {path.name}",
        load_kwargs={
            "use_kernels": True,
            "kernel_config": Lazy(kernel_config, f"KernelConfig({kernel_layer}: {path.name}:{layer}, local)"),
            "device_map": Lazy(lambda device: device, "the case's device"),
        },
        requirements=Requirements(packages=(KERNELS,), custom=(_transformers_integration, _transformers_kernel_device)),
        prepare=prepare,
        context=watch.context,
        **kwargs,
    )


def builtin() -> list[Technique]:
    repo = fixture_repository()
    return [
        local_layer_technique(
            "kernels_local_rmsnorm",
            repo,
            layer="RMSNorm",
            description="kernelize RMSNorm with the bundled local repository's pure-torch RMSNorm (any device)",
        ),
        local_attention_technique(
            "kernels_local_attention",
            repo,
            description="the bundled local repository's pure-torch attention through AttentionInterface",
        ),
        hub_layer_technique(
            "kernels_hub_rmsnorm",
            LIGER_RMSNORM.repo_id,
            layer="LigerRMSNorm",
            version=LIGER_RMSNORM.version,
            description="kernelize RMSNorm with Liger's Triton RMSNorm from the hub (version 3: unpinned)",
        ),
        hub_attention_technique(
            "kernels_hub_flash_attn",
            FLASH_ATTN2.repo_id,
            revision=FLASH_ATTN2.revision,
            description="attn_implementation='kernels-community/flash-attn2@<commit>' through Transformers",
        ),
        transformers_local_layer_technique(
            "kernels_use_kernels_local",
            repo,
            description="use_kernels=True with a KernelConfig naming the bundled local repository's RMSNorm",
        ),
    ]
