"""What the kernels techniques share: their requirements, the model's device, and ``kernelize`` with a
mapping, watched so that the kernel requested is the one that ran."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_infer.core.stack import Stack
from pytest_infer.techniques.kernels.support import (
    HubRef,
    add_provenance,
    ensure_kernel_layers,
    hub_availability_reason,
    is_within,
    kernels_drift_reason,
    repository_digest,
    transformers_kernel_devices,
)
from pytest_infer.techniques.kernels.watch import KernelWatch, fail

KERNELS = ("kernels", ">=0.17")


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

        registered_here = ensure_kernel_layers(model, kernel_layer)
        repo = make_repo()
        with use_kernel_mapping({kernel_layer: dict.fromkeys(devices, repo)}, inherit_mapping=False):
            kernelize(model, mode=Mode.INFERENCE)
        layer_cls = _loaded_layer(repo, local=local)
        where = root()
        if layer_cls is not None and where is not None and not is_within(_source(layer_cls), where):
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


def _resolved_revision(repo_id: str) -> str | None:
    """The revision ``kernels`` loaded ``repo_id`` at (from its registry of loaded kernels)."""
    from kernels import get_loaded_kernels

    for loaded in get_loaded_kernels():
        if loaded.repo_info is not None and loaded.repo_info.repo_id == repo_id:
            return str(loaded.repo_info.revision)
    return None
