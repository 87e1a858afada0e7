"""Tensor parallelism: ranks started through torch.distributed, one model shard each.

Every rank loads the model with Transformers' own tensor-parallel path,
``from_pretrained(..., distributed_config=DistributedConfig(tp_size=N))``: the model's predefined
``base_model_tp_plan`` (``tp_plan="auto"``) shards attention and MLP projections across the ranks; the
process group is gloo on CPU and nccl on CUDA (Transformers picks it from the accelerator). N is the
ranks' ``WORLD_SIZE``, which :mod:`pytest_infer.distributed` sets from ``--infer-tp-size`` when it
starts them through ``torch.distributed``'s elastic launcher: ``runner="multiprocess"`` means the
checks never run these techniques in the pytest process, only in their ranks.
"""

from __future__ import annotations

from typing import Any

from pytest_infer.core.requirements import Requirements
from pytest_infer.core.technique import Lazy, Technique
from pytest_infer.runtime.kv_cache import max_cache_len


def distributed_config() -> Any:
    """``DistributedConfig(tp_size=WORLD_SIZE)``, built inside a rank (the launcher sets WORLD_SIZE)."""
    import os

    from transformers import DistributedConfig

    world = os.environ.get("WORLD_SIZE")
    if world is None:
        raise RuntimeError(
            "a tensor-parallel technique loads only inside its ranks (runner 'multiprocess', started by "
            "pytest_infer.distributed); WORLD_SIZE is not set in this process"
        )
    return DistributedConfig(tp_size=int(world))


def builtin() -> list[Technique]:
    # gloo on CPU, nccl on CUDA (ROCm's torch reports its GPUs as cuda and runs nccl as rccl)
    devices = Requirements(device_kinds=frozenset({"cpu", "cuda", "rocm"}), python_modules=("torch.distributed",))
    tp_load = {"distributed_config": Lazy(distributed_config, "DistributedConfig(tp_size=--infer-tp-size)")}
    return [
        Technique(
            name="tensor_parallel",
            family="parallelism",
            description="tensor parallel over --infer-tp-size ranks (DistributedConfig(tp_size=N), the model's tp plan)",
            load_kwargs=tp_load,
            requirements=devices,
            runner="multiprocess",
        ),
        Technique(
            name="tensor_parallel_static",
            family="parallelism",
            description="tensor parallel with a StaticCache (each rank caches its own key/value heads)",
            load_kwargs=tp_load,
            generate_kwargs={
                "cache_implementation": "static",
                "max_cache_len": Lazy(max_cache_len),
                "disable_compile": True,
            },
            requirements=devices,
            runner="multiprocess",
        ),
    ]
