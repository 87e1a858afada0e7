"""KV-cache checks beyond token parity (``--infer-suite generation``), for every caching technique and
every stack containing one (see pytest_infer/cache_checks.py)."""

from __future__ import annotations


def test_cache_is_the_one_requested(caching_technique, infer_parity):
    """The cache generate() used: class, layers, offloading, bits, residual length as requested."""
    infer_parity.assert_cache_effective(caching_technique)


def test_cache_arguments_not_mutated(caching_technique, infer_parity):
    """Two generate() calls sharing one cache_config: same tokens, the arguments left as they were."""
    infer_parity.assert_cache_arguments(caching_technique)


def test_kv_cache_memory(caching_technique, infer_parity):
    """KV bytes on the device vs. the dynamic cache at the same length, against kv_memory_ratio expectations."""
    infer_parity.assert_kv_memory(caching_technique)


def test_cache_kernel_parity(caching_technique, infer_parity):
    """A quantized cache computes what its format stores: generation with it against its simulated twin (the same
    scheme's quantize-dequantize values, the same residual window), logits step by step."""
    infer_parity.assert_cache_kernel(caching_technique)


def test_cache_quality(caching_technique, infer_parity, benchmark):
    """What the cache costs: perplexity ratio of the held-out text decoded token by token through the cache, against
    the reference's dynamic cache, and greedy agreement, against the technique's budget."""
    infer_parity.assert_quality(caching_technique, "decode", benchmark)
