"""The speedup vs memory plot: `--infer-plot` in a session, `pytest-infer plot` offline, matplotlib optional."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_infer.__main__ import main
from pytest_infer.reports.document import report_document
from pytest_infer.reports.plot import HEIGHT_PX, PARITY_STYLE, WIDTH_PX, plot_points, write_plot

# A technique that is as fast as sdpa but wrong: layer 2's output scaled by 1.05 (parity must fail).
SKEWED = """
from pytest_infer import Technique


def skew_layer_2(model):
    def hook(module, inputs, output):
        return (output[0] * 1.05, *output[1:]) if isinstance(output, tuple) else output * 1.05

    model.model.layers[2].register_forward_hook(hook)
    return model


def pytest_infer_register_techniques(registry):
    registry.add(Technique(name="skewed", family="custom", load_kwargs={"attn_implementation": "sdpa"},
                           prepare=skew_layer_2))
"""
PERF_ARGS = ("--infer-perf-rounds", "3", "--infer-perf-new-tokens", "8", "--infer-baseline", "eager")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def pixels_of(path: Path, colour: str) -> int:
    """How many pixels of the image are ``colour`` (#rrggbb), within a small tolerance."""
    import numpy as np
    from matplotlib.image import imread

    rgb = imread(str(path))[..., :3]
    want = np.array([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(rgb - want).max(axis=-1) < 0.03).sum())


GREEN, RED = PARITY_STYLE["pass"][1], PARITY_STYLE["fail"][1]


def test_session_plot_and_offline_plot_from_its_report(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest(SKEWED)
    result = run_infer(
        "--infer-suite",
        "parity,perf",
        "--infer-technique",
        "sdpa,static_cache,skewed",
        *PERF_ARGS,
        "--infer-report=report.json",
        "--infer-plot=run.png",
        # the plot reads logit parity and the decode test's speedup and weight ratio: the rest adds only time
        "-k",
        "test_logit_parity or test_padded_batches or test_decode_speed",
    )
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 2, result.stdout.str()  # skewed: logits and padded batches
    result.stdout.fnmatch_lines(["pytest-infer: plot of speedup vs memory written to run.png"])
    run_png = pytester.path / "run.png"
    assert png_size(run_png) == (WIDTH_PX, HEIGHT_PX) == (960, 600)
    assert pixels_of(run_png, GREEN) > 50 and pixels_of(run_png, RED) > 50  # sdpa passes parity, skewed fails

    doc = json.loads((pytester.path / "report.json").read_text())
    points = {p.technique: p for p in plot_points(doc)}
    assert set(points) == {"sdpa", "static_cache", "skewed"}
    assert points["sdpa"].parity == "pass" and points["skewed"].parity == "fail"
    assert points["static_cache"].parity is None  # runs under generate: no logit check, generation not run
    speed = {
        r["technique"]: r["metrics"]
        for r in doc["results"]
        if r["check"] == "speed" and r.get("scenario_key", "decode") == "decode"
    }
    for name, p in points.items():
        assert p.speedup == speed[name]["speedup"] and p.memory_ratio == speed[name]["weight_memory_ratio"]
        assert p.memory_metric == "weight_memory_ratio"  # cpu: no peak memory measured

    # the same report, offline, without the technique that failed: no red mark left
    doc["results"] = [r for r in doc["results"] if r["technique"] != "skewed"]
    (pytester.path / "passing.json").write_text(json.dumps(doc))
    done = subprocess.run(
        [sys.executable, "-m", "pytest_infer", "plot", "passing.json", "-o", "offline.png"],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "offline.png"
    offline = pytester.path / "offline.png"
    assert png_size(offline) == (960, 600)
    assert pixels_of(offline, GREEN) > 50 and pixels_of(offline, RED) == 0


def speed_result(technique: str, speedup: float, **metrics: float) -> dict[str, Any]:
    return {
        "check": "speed",
        "technique": technique,
        "baseline": "eager",
        "device": "cuda",
        "dtype": "bfloat16",
        "passed": True,
        "verdict": "pass",
        "metrics": {"speedup": speedup, "speedup_low": speedup - 0.2, "speedup_high": speedup + 0.2, **metrics},
    }


def logit_result(technique: str, passed: bool) -> dict[str, Any]:
    return {"check": "logits", "technique": technique, "device": "cuda", "dtype": "bfloat16", "passed": passed}


def gpu_doc(results: list[dict[str, Any]]) -> dict[str, Any]:
    stack = {"device_kind": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    return report_document(stack, {}, results, [], 1.0, {"pytest-infer": "0.1.0"})


def test_peak_memory_is_plotted_where_measured(tmp_path: Path) -> None:
    doc = gpu_doc(
        [
            logit_result("bnb_int8", True),
            speed_result("bnb_int8", 0.7, weight_memory_ratio=0.55, peak_memory_ratio=0.62),
            logit_result("fp8", False),
            speed_result("fp8", 1.6, weight_memory_ratio=0.5, peak_memory_ratio=0.58),
        ]
    )
    points = {p.technique: p for p in plot_points(doc)}
    assert (points["bnb_int8"].memory_ratio, points["bnb_int8"].memory_metric) == (0.62, "peak_memory_ratio")
    fp8 = points["fp8"]
    assert fp8.parity == "fail" and (fp8.speedup_low, fp8.speedup_high) == pytest.approx((1.4, 1.8))
    out = tmp_path / "gpu.png"
    assert write_plot(doc, out) == str(out)
    assert png_size(out) == (960, 600) and pixels_of(out, RED) > 50
    assert [p.name for p in tmp_path.iterdir()] == ["gpu.png"]  # written atomically: no temporary left


def test_report_without_speed_results_plots_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = gpu_doc([logit_result("sdpa", True)])
    assert write_plot(doc, tmp_path / "none.png") is None
    (tmp_path / "parity.json").write_text(json.dumps(doc))
    assert main(["plot", str(tmp_path / "parity.json")]) == 2  # unusable input: 1 is kept for a regression
    assert "has no speed results to plot; run the perf suite (--infer-suite perf)" in capsys.readouterr().err
    assert not (tmp_path / "parity.png").exists()


def test_plot_of_a_report_with_another_schema_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = gpu_doc([speed_result("sdpa", 1.2, weight_memory_ratio=1.0)])
    doc["schema_version"] = 7
    (tmp_path / "r.json").write_text(json.dumps(doc))
    assert main(["plot", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'r.json'}: report schema version 7 does not match version 1" in err


BLOCK_MATPLOTLIB = "import sys; sys.modules['matplotlib'] = None  # as if it were not installed\n"


def test_missing_matplotlib_names_the_extra(tmp_path: Path) -> None:
    doc = gpu_doc([speed_result("sdpa", 1.2, weight_memory_ratio=1.0)])
    (tmp_path / "r.json").write_text(json.dumps(doc))
    code = BLOCK_MATPLOTLIB + "from pytest_infer.__main__ import main; raise SystemExit(main(['plot', 'r.json']))"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "the plot needs matplotlib, which is not installed: pip install 'pytest-infer[plot]'" in done.stderr
    assert not (tmp_path / "r.png").exists()


def test_infer_plot_without_matplotlib_is_a_usage_error(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest(BLOCK_MATPLOTLIB)  # loaded before the plugin reads its options
    result = run_infer("--infer-plot=p.png")  # refused at configure time: no test needs to run
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "pytest-infer: --infer-plot p.png: the plot needs matplotlib, which is not installed: "
        "pip install 'pytest-infer[plot]'" in result.stderr.str()
    )
