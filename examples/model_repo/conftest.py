"""pytest-infer in a model repository: the repository's own attention kernel becomes a technique, checked
by the bundled suites (``--infer-suite``) and by this repository's tests (tests/) like any built-in.

The configuration (techniques, dtypes, suites' sizes, tolerances) is in pyproject.toml; what the kernel
must buy in speed and memory is stated here, on the technique, per stack.
"""

from __future__ import annotations

from my_model.attention import chunked_attention_forward

from pytest_infer import Expectation, Registry, Tolerance
from pytest_infer.techniques.attention import attention_function_technique


def pytest_infer_register_techniques(registry: Registry) -> None:
    registry.add(
        attention_function_technique(
            "chunked_attention",
            chunked_attention_forward,
            description="keys in chunks of 16, online softmax in float32 (my_model/attention.py)",
            mask="eager",  # an additive float mask, materialised for every call (never None)
            # fixed bounds in bfloat16 (float32 ones come from the measured noise floor and pyproject.toml)
            tolerances={"bfloat16": Tolerance(max_abs=0.5, max_kl=1e-2, min_top1=1.0, tie_margin=0.5)},
            expectations=(
                # same weights as the baseline: it must not cost memory, anywhere
                Expectation("weight_memory_ratio", "<=", 1.0),
                # on GPUs it has to be worth its keep (not decided on CPU runners)
                Expectation("decode_speedup", ">=", 1.0, stacks=("cuda",)),
            ),
        )
    )
