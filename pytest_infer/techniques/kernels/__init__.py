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

from pytest_infer.core.technique import Technique
from pytest_infer.techniques.kernels.attention import hub_attention_technique, local_attention_technique
from pytest_infer.techniques.kernels.layers import (
    hub_layer_technique,
    local_layer_technique,
    transformers_local_layer_technique,
)
from pytest_infer.techniques.kernels.support import HubRef, fixture_repository

# Hub kernels of the built-ins. A commit pins; a version (branch vN) moves and is refused under --infer-strict.
FLASH_ATTN2 = HubRef("kernels-community/flash-attn2", revision="81fb77c12b2ad5d69380669b46739d5868614502")
LIGER_RMSNORM = HubRef("kernels-community/liger-kernels", version=3)  # Transformers' own mapping uses v3


# --- requirements --------------------------------------------------------------------------------


# --- layers through kernelize --------------------------------------------------------------------


# --- attention functions -----------------------------------------------------------------------------


# --- Transformers' own integration ----------------------------------------------------------------------


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
