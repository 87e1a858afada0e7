"""Which perf-suite scenarios run for which technique (``--infer-perf-scenarios``).

``auto`` (the default) times each technique where its family changes something worth timing, so that
``--infer-suite all`` stays a few minutes on a small machine; ``all`` times every scenario of every
technique; a list (``decode,prefill``) times those for every technique. Import-light: the option is
checked at start-up and the selection made at collection, before torch is imported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pytest_infer.core.technique import Technique

SCENARIOS = ("decode", "prefill", "ttft", "load", "memory", "batching")

# the bundled suite's test per scenario (suites/test_performance.py)
TESTS = {
    "test_decode_speed": "decode",
    "test_prefill_latency": "prefill",
    "test_time_to_first_token": "ttft",
    "test_model_load": "load",
    "test_memory": "memory",
    "test_batching_throughput": "batching",
}

# auto: decode (the end-to-end figure: prefill, every decode step, the cache; weights and peak memory of the call)
# for every family that runs under generate, plus the scenarios where the family's change shows apart from it:
# attention, kernels and compilation change the compute of a long prefill (256 tokens, see AUTO_PREFILL_LENGTHS);
# compilation also the first-token latency (a short prefill and generate's set-up: where guard and launch
# overhead show, as in a short prefill alone); quantization the load (quantize-on-load; its
# weight bytes are in decode's figures and test_weight_storage); caches the KV bytes (memory); continuous batching
# is timed by its throughput scenario only. Families not listed (custom techniques, stacks of unlisted families)
# get every scenario.
FAMILY_SCENARIOS: dict[str, tuple[str, ...]] = {
    "attention": ("decode", "prefill"),
    "kernels": ("decode", "prefill", "load"),
    "compilation": ("decode", "prefill", "ttft"),
    "quantization": ("decode", "load"),
    "caching": ("decode", "memory"),
    "parallelism": ("decode", "memory"),
    "batching": ("batching",),
}
# auto: the prefill lengths per family where not every length (perf.PREFILL_LENGTHS) is timed
AUTO_PREFILL_LENGTHS: dict[str, tuple[int, ...]] = {"attention": (256,), "kernels": (256,), "compilation": (256,)}


class ScenarioError(ValueError):
    pass


def validate(values: Sequence[str]) -> tuple[str, ...]:
    """``auto``, ``all`` or scenario names; returns ``("auto",)``, ``SCENARIOS`` or the names, in order."""
    names = [v.strip().lower() for v in values if v.strip()] or ["auto"]
    if names == ["auto"]:
        return ("auto",)
    if "all" in names:
        if len(names) > 1:
            raise ScenarioError(f"'all' cannot be combined with other scenarios: {','.join(names)}")
        return SCENARIOS
    unknown = [n for n in names if n not in (*SCENARIOS, "auto")]
    if unknown:
        bad = ", ".join(repr(n) for n in unknown)
        raise ScenarioError(f"unknown scenario {bad}; valid: auto, all, or a comma list of {', '.join(SCENARIOS)}")
    if "auto" in names:
        raise ScenarioError(f"'auto' cannot be combined with other scenarios: {','.join(names)}")
    return tuple(dict.fromkeys(names))


def wanted(selection: Sequence[str], families: Iterable[str]) -> frozenset[str]:
    """The scenarios to time for a technique of these families (a stack has its components' families)."""
    if tuple(selection) != ("auto",):
        return frozenset(selection)
    out: set[str] = set()
    for family in set(families) - {"stack"} or {"stack"}:
        out.update(FAMILY_SCENARIOS.get(family, SCENARIOS))
    return frozenset(out) or frozenset(SCENARIOS)


def prefill_lengths(selection: Sequence[str], families: Iterable[str]) -> frozenset[int] | None:
    """The prefill lengths to time for a technique of these families (None: every length)."""
    if tuple(selection) != ("auto",):
        return None
    lengths: set[int] = set()
    for family in set(families) - {"stack"} or {"stack"}:
        timed = FAMILY_SCENARIOS.get(family)
        if timed is None:
            return None  # a family auto knows nothing of: everything
        if "prefill" not in timed:
            continue  # it does not time prefill: no say in its lengths
        if family not in AUTO_PREFILL_LENGTHS:
            return None
        lengths.update(AUTO_PREFILL_LENGTHS[family])
    return frozenset(lengths) or None


# the prompt lengths of the bundled prefill scenario (tests select one with -k prompt256)
PREFILL_LENGTHS = (32, 256)


def unsupported(technique: Technique, scenario: str) -> str | None:
    """Why ``scenario`` cannot be measured for ``technique`` in this process (None: it can)."""
    name, runner = technique.name, technique.runner
    if runner == "multiprocess":
        return f"{name} runs in its ranks: the perf suite times one process"
    if scenario == "batching" and runner != "generate_batch":
        return f"{name} runs under {runner}, not generate_batch: no continuous-batching throughput to measure"
    if scenario in ("prefill", "ttft") and runner == "generate_batch":
        return (
            f"{name} runs under continuous batching (generate_batch), which schedules prefill inside its own loop: "
            "see test_batching_throughput"
        )
    return None
