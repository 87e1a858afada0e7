"""Kernel layers through ``kernelize``: a local repository, a hub repository pinned by revision, and
Transformers' own ``use_kernels=True`` with a local ``KernelConfig``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_infer.core.requirements import Requirements
from pytest_infer.core.technique import Lazy, Technique
from pytest_infer.techniques.kernels.common import (
    KERNELS,
    _hub,
    _kernelize,
    _local_provenance,
    _resolved_revision,
    _transformers_integration,
    _transformers_kernel_device,
)
from pytest_infer.techniques.kernels.support import (
    KERNEL_DEVICES,
    HubRef,
    add_provenance,
    cached_snapshot,
    pin_check,
    repository_digest,
    warn_unpinned,
)
from pytest_infer.techniques.kernels.watch import KernelWatch


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
        probes=(watch,),
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
        custom=(_hub(ref),),
        strict=(pin_check(ref),),
    )
    return Technique(
        name=name,
        family="kernels",
        description=description or f"kernelize {kernel_layer} with {layer} of hub kernel {ref}",
        requirements=base if requirements is None else base.merge(requirements),
        prepare=_kernelize(
            name, kernel_layer, make_repo, devices, watch, provenance, False, lambda: cached_snapshot(ref)
        ),
        probes=(watch,),
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
        probes=(watch,),
        **kwargs,
    )
