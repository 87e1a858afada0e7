"""The quantization checks beyond parity: the weights really are stored smaller (real bytes, tensor subclasses
unwrapped), by what the technique promises for this stack and dtype or a test's ``infer_memory`` marker."""

from __future__ import annotations

from pytest_infer.checks.models import CaseModels
from pytest_infer.core.case import Case
from pytest_infer.perf.claims import expectations_for
from pytest_infer.perf.weights import WeightStorageResult, measure_weight_storage

STORAGE_METRICS = ("weight_memory_ratio", "quantized_layers_ratio", "covered_fraction")


def weight_storage(models: CaseModels, case: Case) -> WeightStorageResult:
    """Real weight bytes of the case's model against the reference's in the same dtype, with the storage
    expectations that apply (the technique's for this stack and dtype, then ``infer_memory`` markers)."""
    ctx = models.ctx
    chosen = [
        e
        for e, _ in expectations_for(
            case.technique.expectations, ctx.stack_for(case.device), case.dtype, "decode", ctx.markers
        )
        if e.metric in STORAGE_METRICS
    ]
    ref_case = ctx.ref_case(case.device, case.dtype)
    result = measure_weight_storage(
        models.model(case),
        models.model(ref_case),
        technique=case.technique.name,
        baseline_name=ref_case.technique.name,
        device=case.device,
        dtype=case.dtype,
        expectations=chosen,
    )
    return models.record(result)
