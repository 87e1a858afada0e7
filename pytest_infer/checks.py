"""The checks a test runs for a case — logit parity, padded batches, generation parity — with their
reference computations cached in the session. Each returns a result object; ``assert_*`` fail the test
with the result's message (the pytest glue is only that, and recording the result).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_infer.models import encode, forward_logits, load_model
from pytest_infer.session import Case, InferSession

if TYPE_CHECKING:
    from pytest_infer.floor import NoiseFloor
    from pytest_infer.generation import GenerationParityResult
    from pytest_infer.parity import LogitParityResult
    from pytest_infer.technique import Tolerance


class ParityChecks:
    """Bound to one test: its markers shape the tolerance, its node receives the results."""

    def __init__(
        self, session: InferSession, node: pytest.Item | None, tokenizer: Any, prompts: tuple[str, ...]
    ) -> None:
        self.session = session
        self.node = node
        self.tokenizer = tokenizer
        self.prompts = prompts

    # --- models and references (cached in the session) ----------------------------------------
    def _key(self, case: Case) -> tuple[Any, ...]:
        return (self.session.source, case.technique.load_signature(), case.dtype, case.device)

    def model(self, case: Case) -> Any:
        s = self.session

        def load() -> Any:
            with s.progress.step(f"loading {s.source.label} with {case.technique.name} ({case.dtype}, {case.device})"):
                return load_model(s.source, case.technique, case.dtype, case.device)

        return s.cache.model(self._key(case), load)

    def _step(self, case: Case, what: str) -> Any:
        """A progress step around a call of the case's technique (see :mod:`pytest_infer.progress`)."""
        t = case.technique
        if t.runner == "multiprocess":
            verb = f"running {t.name} on {self.session.config.tp_size} ranks"
        else:
            verb = f"{'compiling and running' if t.compiled else 'running'} {t.name}"
        return self.session.progress.step(f"{verb} ({case.dtype}, {case.device}): {what}")

    @contextlib.contextmanager
    def _guard(self, case: Case) -> Iterator[None]:
        """A case that raises leaves no state behind for the next test: its model is dropped (a failed compile
        can break later calls of the same model), and where the technique compiles the model, torch.compile's
        caches of this process are reset too. Other techniques' failures keep them: a reset costs every compiled
        model after it a full recompile, and a fresh model is not affected by another's failed compile
        (checked on the flex_attention CPU defect, docs/known-issues.md)."""
        try:
            yield
        except (pytest.fail.Exception, pytest.skip.Exception):
            raise  # a verdict (parity failed, inconclusive), not a broken model: keep it and the compile caches
        except BaseException as exc:
            before = _allocated(case.device)
            self.session.cache.discard(self._key(case))
            dynamo = sys.modules.get("torch._dynamo")
            if dynamo is not None and case.technique.compiled:
                dynamo.reset()
            if type(exc).__name__ == "OutOfMemoryError":
                from pytest_infer.isolation import out_of_memory_message

                exc.__traceback__ = None  # its frames hold the tensors of the failed call
                after = _allocated(case.device)
                freed = None if before is None or after is None else before - after
                pytest.fail(f"{case.technique.name}: {out_of_memory_message(exc, case.device, freed)}", pytrace=False)
            raise

    def _ref_case(self, device: str, dtype: str | None = None) -> Case:
        return Case(self.session.reference, device, dtype or self.session.config.reference_dtype)

    def reference_logits(self, device: str, dtype: str | None = None) -> tuple[Any, Any]:
        """(logits, attention_mask) of the reference on the padded prompt batch, computed once."""
        case = self._ref_case(device, dtype)
        key = ("logits", self.session.source, case.technique.name, case.dtype, device, self.prompts)

        def compute() -> tuple[Any, Any]:
            batch = encode(self.tokenizer, self.prompts, device)
            model = self.model(case)
            with self._step(case, "the reference logits"):
                return forward_logits(model, batch, case.technique), batch.attention_mask

        return self.session.cache.tensor(key, compute)

    def reference_solo(self, device: str, dtype: str | None = None) -> list[Any]:
        from pytest_infer.padding import solo_logits

        case = self._ref_case(device, dtype)
        key = ("solo", self.session.source, case.technique.name, case.dtype, device, self.prompts)
        return self.session.cache.tensor(
            key, lambda: solo_logits(self.model(case), self.tokenizer, self.prompts, case.technique, device)
        )

    def noise_floor(self, device: str, dtype: str) -> NoiseFloor:
        """The reference's own noise in ``dtype`` on ``device`` (see :mod:`pytest_infer.floor`)."""
        from pytest_infer.floor import measure_floor
        from pytest_infer.parity import compare_logits
        from pytest_infer.technique import Tolerance

        def compute() -> NoiseFloor:
            import torch

            ref, mask = self.reference_logits(device)
            in_dtype, _ = self.reference_logits(device, dtype)
            common = dict(
                technique=f"{self.session.reference.name}",
                reference_name=self.session.reference.name,
                device=device,
                dtype=dtype,
                reference_dtype=self.session.config.reference_dtype,
            )
            loose = Tolerance(min_top1=None)
            dtype_noise = compare_logits(ref, in_dtype, mask, loose, **common)  # type: ignore[arg-type]
            solo = torch.zeros_like(in_dtype)
            for b, s in enumerate(self.reference_solo(device, dtype)):
                solo[b, mask[b].bool()] = s.to(solo.dtype)
            batch_noise = compare_logits(solo, in_dtype, mask, loose, **common)  # type: ignore[arg-type]
            real = mask.bool()
            r, c = ref[real], in_dtype[real]
            top2 = r.topk(2, dim=-1).values
            flips = r.argmax(-1) != c.argmax(-1)
            flip_margin = float((top2[:, 0] - top2[:, 1])[flips].max()) if bool(flips.any()) else 0.0
            return measure_floor(dtype_noise, batch_noise, flip_margin)

        key = ("floor", self.session.source, self.session.reference.name, dtype, device, self.prompts)
        return self.session.cache.tensor(key, compute)

    def tolerance(self, case: Case) -> tuple[Tolerance, NoiseFloor | None]:
        floor = self.noise_floor(case.device, case.dtype) if self.session.config.tolerance_mode == "floor" else None
        return self.session.tolerance(case, self.node, floor), floor

    # --- checks ---------------------------------------------------------------------------------
    def logits(self, case: Case, model: Any | None = None) -> LogitParityResult:
        """Run ``case`` on the padded prompt batch and compare with the reference."""
        from pytest_infer.parity import compare_logits

        tolerance, floor = self.tolerance(case)
        ref, mask = self.reference_logits(case.device)
        batch = encode(self.tokenizer, self.prompts, case.device)
        logits = self._candidate_logits(case, batch, model)
        result = compare_logits(
            ref,
            logits,
            mask,
            tolerance,
            technique=case.technique.name,
            reference_name=self.session.reference.name,
            device=case.device,
            dtype=case.dtype,
            reference_dtype=self.session.config.reference_dtype,
            prompts=self.prompts,
        )
        result.floor = floor.to_dict() if floor else None
        if not result.passed:
            result.localization = self._localize(case, model)
        return self._record(result, case)

    def padding(self, case: Case) -> list[LogitParityResult]:
        """The padded-batch sweep: every padded row against the same prompt run alone by the reference."""
        from pytest_infer.padding import padding_parity, parse_sweep

        tolerance, floor = self.tolerance(case)
        pairs = padding_parity(
            self.reference_solo(case.device),
            self.model(case),
            self.tokenizer,
            self.prompts,
            case.technique,
            tolerance,
            parse_sweep(self.session.config.padding),
            reference_name=self.session.reference.name,
            device=case.device,
            dtype=case.dtype,
            reference_dtype=self.session.config.reference_dtype,
        )
        results = []
        for _, result in pairs:
            result.floor = floor.to_dict() if floor else None
            results.append(self._record(result, case))
        return results

    def generation(self, case: Case) -> list[GenerationParityResult]:
        """Greedy generation at each configured length vs. the reference's, token by token."""
        from pytest_infer.generation import compare_generations, greedy_generate

        s = self.session
        lengths = s.config.new_tokens
        longest = max(lengths)
        ref_case = self._ref_case(case.device)
        key = ("generate", s.source, ref_case.technique.name, ref_case.dtype, case.device, self.prompts, longest)
        batch = encode(self.tokenizer, self.prompts, case.device)
        reference = s.cache.tensor(
            key, lambda: greedy_generate(self.model(ref_case), self.tokenizer, batch, ref_case.technique, longest)
        )
        tolerance, _ = self.tolerance(case)
        results = []
        for n in lengths:
            candidate = self._candidate_generate(case, batch, n)
            result = compare_generations(
                reference,
                candidate,
                self.tokenizer,
                near_tie=tolerance.tie_margin,
                new_tokens=n,
                technique=case.technique.name,
                reference_name=s.reference.name,
                device=case.device,
                dtype=case.dtype,
                reference_dtype=s.config.reference_dtype,
                prompts=self.prompts,
                min_greedy=tolerance.min_greedy,
            )
            results.append(self._record(result, case))
        return results

    def storage(self, case: Case) -> Any:
        """Real weight bytes against the reference's in the same dtype, and the technique's
        ``weight_memory_ratio`` expectation for this stack (see :mod:`pytest_infer.storage`)."""
        from pytest_infer.perf import PerfChecks
        from pytest_infer.storage import measure_storage

        # the technique's expectations for this stack and dtype, and @pytest.mark.infer_memory markers
        chosen = [
            e
            for e, _ in PerfChecks(self.session, self.node, self).expectations(case)
            if e.metric in ("weight_memory_ratio", "quantized_layers_ratio")
        ]
        ref_case = self._ref_case(case.device, case.dtype)
        return self._record(
            measure_storage(
                self.model(case),
                self.model(ref_case),
                technique=case.technique.name,
                baseline_name=ref_case.technique.name,
                device=case.device,
                dtype=case.dtype,
                expectations=chosen,
            )
        )

    def assert_storage(self, case: Case) -> Any:
        with self._guard(case):
            return _assert([self.storage(case)])[0]

    def inference_mode(self, case: Case) -> LogitParityResult:
        """The case's logits under ``torch.inference_mode()`` against its own logits under ``no_grad``: a
        technique whose tensors break in inference mode (what serving code uses) fails here."""
        import dataclasses

        from pytest_infer.parity import compare_logits
        from pytest_infer.tolerances import default_tolerance

        batch = encode(self.tokenizer, self.prompts, case.device)
        model = self.model(case)
        plain = forward_logits(model, batch, dataclasses.replace(case.technique, inference_mode=False))
        inference = forward_logits(model, batch, dataclasses.replace(case.technique, inference_mode=True))
        result = compare_logits(
            plain,
            inference,
            batch.attention_mask,
            default_tolerance(case.dtype, case.device),
            technique=case.technique.name,
            reference_name=f"{case.technique.name} under no_grad",
            device=case.device,
            dtype=case.dtype,
            reference_dtype=case.dtype,
            prompts=self.prompts,
        )
        result.check, result.variant = "inference_mode", "torch.inference_mode vs no_grad"
        return self._record(result)

    def assert_inference_mode(self, case: Case) -> LogitParityResult:
        with self._guard(case):
            return _assert([self.inference_mode(case)])[0]

    # --- KV caches (see :mod:`pytest_infer.cache_checks`) ----------------------------------------
    def _cache_run(self, case: Case, technique: Any = None) -> tuple[list[list[int]], dict[str, Any]]:
        """(tokens, cache description) of one forced-length generation, computed once per case."""
        from pytest_infer.cache_checks import describe_cache, generate_with_cache

        technique = technique or case.technique
        n = max(self.session.config.new_tokens)
        key = ("cache", self.session.source, technique.name, case.dtype, case.device, self.prompts, n)

        def compute() -> tuple[list[list[int]], dict[str, Any]]:
            batch = encode(self.tokenizer, self.prompts, case.device)
            model = self.model(case if technique is case.technique else self._ref_case(case.device, case.dtype))
            tokens, cache = generate_with_cache(model, self.tokenizer, batch, technique, n)
            return tokens, describe_cache(cache, case.device.split(":")[0])

        return self.session.cache.tensor(key, compute)

    def cache_effective(self, case: Case) -> Any:
        """The cache ``generate`` used is the one the technique asked for."""
        from pytest_infer.cache_checks import CacheCheckResult, cache_problems, expected_cache, is_sliding
        from pytest_infer.technique import resolve_kwargs

        spec = expected_cache(resolve_kwargs(case.technique.generate_kwargs, needed_length=1, device=case.device))
        _, seen = self._cache_run(case)
        problems = cache_problems(spec, seen, is_sliding(self.model(case)))
        details = {"requested": spec.implementation, **{k: v for k, v in seen.items() if not k.startswith("kv")}}
        return self._record(
            CacheCheckResult(case.technique.name, case.device, case.dtype, "effective", problems, details)
        )

    def cache_arguments(self, case: Case) -> Any:
        """Two ``generate`` calls sharing one set of arguments: same tokens, arguments left unchanged."""
        from pytest_infer.cache_checks import CacheCheckResult, generate_with_cache, snapshot
        from pytest_infer.technique import resolve_kwargs

        batch = encode(self.tokenizer, self.prompts, case.device)
        n = min(self.session.config.new_tokens)
        kwargs = resolve_kwargs(
            case.technique.generate_kwargs, needed_length=int(batch.input_ids.shape[1]) + n, device=case.device
        )
        before = snapshot(kwargs)
        model = self.model(case)
        first, _ = generate_with_cache(model, self.tokenizer, batch, case.technique, n, kwargs)
        second, _ = generate_with_cache(model, self.tokenizer, batch, case.technique, n, kwargs)
        problems = [
            f"generate changed its argument {k}: {before[k]!r} -> {kwargs.get(k)!r}"
            for k in before
            if snapshot({k: kwargs.get(k)})[k] != before[k]
        ]
        problems += [
            f"row {b}: the second call generated {t2[:8]}... where the first generated {t1[:8]}..."
            for b, (t1, t2) in enumerate(zip(first, second, strict=False))
            if t1 != t2
        ]
        details = {"arguments": {k: repr(v) for k, v in before.items()}, "calls": 2, "new_tokens": n}
        return self._record(
            CacheCheckResult(case.technique.name, case.device, case.dtype, "arguments unchanged", problems, details),
            case,
        )

    def kv_memory(self, case: Case) -> Any:
        """KV bytes held on the device against the dynamic cache at the same (forced) length."""
        from pytest_infer.cache_checks import CacheCheckResult
        from pytest_infer.technique import select_expectations

        _, seen = self._cache_run(case)
        _, base = self._cache_run(case, self.session.registry.get("dynamic_cache"))
        ratio = seen["kv_device_bytes"] / max(1, base["kv_device_bytes"])
        stack = self.session.stack_for(case.device)
        problems = []
        details: dict[str, Any] = {
            "kv_device_bytes": seen["kv_device_bytes"],
            "kv_bytes": seen["kv_bytes"],
            "dynamic_kv_device_bytes": base["kv_device_bytes"],
            "kv_memory_ratio": ratio,
        }
        for e in select_expectations(case.technique.expectations, stack, case.dtype):
            if e.metric == "kv_memory_ratio":
                details["expected"] = f"kv_memory_ratio {e.op} {e.value:g}"
                if not e.holds(ratio):
                    problems.append(
                        f"holds {seen['kv_device_bytes']:,} KV bytes on {case.device} vs {base['kv_device_bytes']:,} "
                        f"for the dynamic cache: {ratio:.3f}x, expected {e.op} {e.value:g}"
                    )
        return self._record(
            CacheCheckResult(case.technique.name, case.device, case.dtype, "kv memory", problems, details)
        )

    def assert_cache_effective(self, case: Case) -> Any:
        with self._guard(case):
            return _assert([self.cache_effective(case)])[0]

    def assert_cache_arguments(self, case: Case) -> Any:
        with self._guard(case):
            return _assert([self.cache_arguments(case)])[0]

    def assert_kv_memory(self, case: Case) -> Any:
        with self._guard(case):
            return _assert([self.kv_memory(case)])[0]

    def recompiles(self, case: Case) -> Any:
        """The recompile guard (see :mod:`pytest_infer.recompile`) on a fresh load of the case's model."""
        from pytest_infer.recompile import recompile_guard

        self.session.cache.discard(self._key(case))  # warm-up must start from an uncompiled model
        model = self.model(case)
        with self._step(case, "the recompile guard's warm-up and varied calls"):
            result = recompile_guard(model, self.tokenizer, self.prompts, case.technique, case.device, case.dtype)
        return self._record(result)

    def assert_no_recompiles(self, case: Case) -> Any:
        with self._guard(case):
            return _assert([self.recompiles(case)])[0]

    def assert_logits(self, case: Case, model: Any | None = None) -> LogitParityResult:
        with self._guard(case):
            return _assert([self.logits(case, model)])[0]

    def assert_padding(self, case: Case) -> list[LogitParityResult]:
        with self._guard(case):
            return _assert(self.padding(case))

    def assert_generation(self, case: Case) -> list[GenerationParityResult]:
        with self._guard(case):
            return _assert(self.generation(case))

    # backwards-friendly name used in docs and examples
    assert_parity = assert_logits
    check = logits

    # --- internals ------------------------------------------------------------------------------
    def _candidate_logits(self, case: Case, batch: Any, model: Any | None = None) -> Any:
        """The case's logits on ``batch``: in this process, or gathered from its ranks (``multiprocess``)."""
        if case.technique.runner == "multiprocess" and model is None:
            from pytest_infer import distributed

            with self._step(case, "logits"):
                return distributed.logits(self.session, case, batch)
        model = model if model is not None else self.model(case)
        with self._step(case, f"logits of {batch.input_ids.shape[0]} prompts"):
            return forward_logits(model, batch, case.technique)

    def _candidate_generate(self, case: Case, batch: Any, new_tokens: int) -> Any:
        """The case's greedy generation of ``new_tokens`` tokens (``multiprocess``: run by its ranks)."""
        from pytest_infer.generation import greedy_generate

        if case.technique.runner == "multiprocess":
            from pytest_infer import distributed

            with self._step(case, f"generate {new_tokens} tokens"):
                return distributed.generate(self.session, case, batch, new_tokens)
        model = self.model(case)
        with self._step(case, f"generate {new_tokens} tokens x {batch.input_ids.shape[0]} prompts"):
            return greedy_generate(model, self.tokenizer, batch, case.technique, new_tokens)

    def _localize(self, case: Case, model: Any | None) -> str | None:
        from pytest_infer.localize import first_divergence

        if case.technique.runner == "multiprocess" and model is None:
            return "(not localized: the candidate runs in its ranks, not in this process)"

        ref_dtype = self.session.config.reference_dtype
        try:
            return first_divergence(
                self.model(self._ref_case(case.device)),
                self.session.reference,
                model if model is not None else self.model(case),
                case.technique,
                encode(self.tokenizer, self.prompts, case.device),
                case.dtype,
                reference_in_dtype=self.model(self._ref_case(case.device, case.dtype))
                if case.dtype != ref_dtype
                else None,
            )
        except Exception as exc:  # localization is a diagnosis: never let it hide the parity failure
            return f"(could not localize the divergence: {type(exc).__name__}: {exc})"

    def _provenance(self, case: Case | None) -> list[dict[str, Any]]:
        """What the case's model records about the code it runs (kernels techniques: the local repository
        and its content hash, or the hub repository and the revision it resolved to)."""
        if case is None or case.technique.prepare is None or case.technique.runner == "multiprocess":
            return []
        return list(getattr(self.model(case), "infer_provenance", None) or [])

    def _record(self, result: Any, case: Case | None = None) -> Any:
        data = result.to_dict()
        provenance = self._provenance(case)
        if provenance:
            data["provenance"] = provenance
        self.session.record(data)
        if self.node is not None:
            self.node.user_properties.append(("infer_result", data))
            if result.passed:  # a failure already carries its message
                lines = [result.message(), *(f"  kernel: {p['summary']}" for p in provenance if "summary" in p)]
                self.node.add_report_section("call", "infer", "\n".join(lines))
        return result


def _allocated(device: str) -> int | None:
    """Device memory allocated now (cuda), after freeing what a failed case left behind; None elsewhere."""
    torch = sys.modules.get("torch")
    if torch is None or not device.startswith("cuda") or not torch.cuda.is_initialized():
        return None
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    return int(torch.cuda.memory_allocated(device))


def _assert(results: list[Any]) -> list[Any]:
    failed = [r for r in results if not r.passed]
    if failed:
        pytest.fail("\n\n".join(r.message() for r in failed), pytrace=False)
    return results
