"""How a parity bound is decided, in one place: :func:`decide_bound` runs the whole chain, from the per-dtype
table below to the test's own markers.

Default logit-parity tolerances per dtype (and device kind), from measurement.

The reference is eager attention in float32 on the same device. The numbers below were measured on the
embedded model (docs/tolerances.md has the table and the command); each bound sits a documented factor
above the largest error seen across the CPU-capable attention backends, so a real kernel fault (a
wrong mask, a dropped head, a NaN) is orders of magnitude past it, while run-to-run noise is not.

``tie_margin``: a position is *decisive* (top-1 must agree) only when the reference's top-1/top-2 logit
margin is at least this; below it, rounding in the candidate's dtype can legitimately swap the two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pytest_infer.core.case import Case
from pytest_infer.core.errors import ExplainedFailure
from pytest_infer.core.registry import resolve_tolerance
from pytest_infer.core.stack import Stack, stack_key_specificity
from pytest_infer.core.tolerance import Tolerance, parse_tolerance_spec, tolerance_keyword_problem
from pytest_infer.parity.floor import NoiseFloor, floor_tolerance

DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    # measured, max over CPU backends (docs/tolerances.md): max_abs 2.3e-5, mean_abs 2.5e-6, max_kl 4.4e-11
    "float32": Tolerance(max_abs=1e-3, mean_abs=1e-4, max_kl=1e-6, min_cosine=0.99999, min_top1=1.0, tie_margin=1e-3),
    # measured: max_abs 0.38, mean_abs 0.045, max_kl 9.7e-3, cosine 0.99966, top-1 flips at margins <= 0.165
    "bfloat16": Tolerance(max_abs=1.5, mean_abs=0.2, max_kl=5e-2, min_cosine=0.998, min_top1=1.0, tie_margin=0.4),
    # measured: max_abs 0.052, mean_abs 0.0055, max_kl 1.1e-4, cosine 0.999993, top-1 flips at margins <= 0.0018
    "float16": Tolerance(max_abs=0.25, mean_abs=0.025, max_kl=5e-4, min_cosine=0.99995, min_top1=1.0, tie_margin=0.05),
}


def default_tolerance(dtype: str, device: str) -> Tolerance:
    """The built-in bound for candidates in ``dtype`` on ``device`` (compared with a float32 reference)."""
    return DEFAULT_TOLERANCES[dtype]


def decide_bound(
    case: Case,
    stack: Stack,
    *,
    floor: NoiseFloor | None = None,
    specs: Sequence[str] = (),
    hook: Callable[[Tolerance], Tolerance | None] | None = None,
    markers: Sequence[Mapping[str, Any]] = (),
) -> Tolerance:
    """The bounds for ``case`` on ``stack``, in order:

    1. the per-dtype table (:data:`DEFAULT_TOLERANCES`);
    2. the technique's own fixed bounds for this dtype (per stack, best match), which replace the table: a
       technique that states its bounds states fixed bounds (lossy techniques);
    3. otherwise the table tightened to the measured noise ``floor`` (:func:`~pytest_infer.parity.floor.floor_tolerance`);
    4. ``--infer-tolerance`` / ``infer_tolerance`` specs (``[TECHNIQUE:][DTYPE:]metric=value``), in order;
    5. the ``pytest_infer_tolerance`` hook (``hook(bound)``: a new Tolerance, or None to keep it);
    6. ``@pytest.mark.infer_tolerance`` markers (``markers``: their keyword arguments, closest first); a marker
       with ``stack=`` applies only on a matching stack.
    """
    tol = default_tolerance(case.dtype, case.device)
    own = resolve_tolerance(case.technique.tolerances.get(case.dtype), stack)
    if own is not None:
        tol = own
    elif floor is not None:
        tol = floor_tolerance(tol, floor)
    for spec in specs:
        name, dtype, values = parse_tolerance_spec(spec)
        if name in (None, case.technique.name) and dtype in (None, case.dtype):
            tol = tol.replace(**values)
    if hook is not None:
        hooked = hook(tol)
        if hooked is not None:
            tol = hooked
    for given in reversed(markers):  # the closest marker last
        kwargs = dict(given)
        key = kwargs.pop("stack", None)
        problem = tolerance_keyword_problem(kwargs, allow_stack=False)
        if problem:
            raise ExplainedFailure(f"@pytest.mark.infer_tolerance: {problem}")
        if key is None or stack_key_specificity(str(key), stack) > 0:
            tol = tol.replace(**kwargs)
    return tol
