"""Under pytest-xdist the tests run on workers; their results must reach the controller's reports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_infer.xdist_results import RESULT_PROPERTY, XdistResults, is_xdist_worker

CASE_TEST = """
def test_logits(infer_case, infer_parity):
    infer_parity.assert_logits(infer_case)
"""


def test_results_of_both_workers_reach_the_controller(
    pytester: pytest.Pytester, run_infer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_cases=CASE_TEST)
    summary = pytester.path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = run_infer(
        "-n", "2", "-v", "--infer-technique", "sdpa,eager", "--infer-report=report.json", "--infer-markdown=m.md"
    )
    result.assert_outcomes(passed=2)
    # which worker ran which case: "[gw1] [ 50%] PASSED test_cases.py::test_logits[cpu-float32-sdpa]"
    ran = dict(
        (m[2], m[1])
        for m in re.finditer(r"\[(gw\d)\] \[\s*\d+%\] PASSED \S+\[cpu-float32-(\w+)\]", result.stdout.str())
    )
    assert set(ran) == {"sdpa", "eager"} and set(ran.values()) == {"gw0", "gw1"}, result.stdout.str()

    doc = json.loads((pytester.path / "report.json").read_text())
    recorded = sorted((r["check"], r["technique"], r["passed"]) for r in doc["results"])
    assert recorded == [("logits", "eager", True), ("logits", "sdpa", True)]  # once each, from either worker
    sdpa = next(r for r in doc["results"] if r["technique"] == "sdpa")
    assert 0 < sdpa["metrics"]["max_abs"] <= sdpa["tolerance"]["max_abs"] and sdpa["rows"]
    assert {t["nodeid"].split("[")[1] for t in doc["tests"]} == {"cpu-float32-sdpa]", "cpu-float32-eager]"}

    result.stdout.fnmatch_lines(["*pytest-infer: technique x check*", "device  dtype     technique  logits*"])
    # in the order the workers finished
    result.stdout.fnmatch_lines_random(["cpu     float32   sdpa       pass *", "cpu     float32   eager      = ref"])
    assert "| cpu | float32 | sdpa | pass " in (pytester.path / "m.md").read_text()
    # the controller appends the matrix once; the workers write nothing
    appended = summary.read_text()
    assert appended.startswith("earlier step\n") and appended.count("## pytest-infer") == 1
    assert "| cpu | float32 | sdpa | pass " in appended and "| cpu | float32 | eager | = ref |" in appended


def report(nodeid: str, when: str, entries: list[Any], worker: str | None = "gw0") -> SimpleNamespace:
    fields: dict[str, Any] = {"nodeid": nodeid, "when": when, "user_properties": entries}
    if worker is not None:
        fields["worker_id"] = worker
    return SimpleNamespace(**fields)


def test_each_result_is_recorded_once_across_setup_call_teardown() -> None:
    recorded: list[dict[str, Any]] = []
    collector = XdistResults(recorded.append)
    a, b = (RESULT_PROPERTY, {"technique": "a"}), (RESULT_PROPERTY, {"technique": "b"})
    other = ("something_else", {"technique": "not ours"})
    # a report's user_properties hold everything the test recorded so far
    for when, entries in (("setup", []), ("call", [a, other]), ("teardown", [a, other, b])):
        collector.pytest_runtest_logreport(report("t.py::x", when, entries))  # type: ignore[arg-type]
    assert recorded == [{"technique": "a"}, {"technique": "b"}]
    # the same test on another worker (--dist each) is another run
    collector.pytest_runtest_logreport(report("t.py::x", "call", [a], worker="gw1"))  # type: ignore[arg-type]
    assert len(recorded) == 3


def test_reports_made_in_this_process_are_left_to_the_session() -> None:
    recorded: list[dict[str, Any]] = []
    collector = XdistResults(recorded.append)
    # without xdist the session already holds the result: taking it from the report would count it twice
    local = report("t.py::x", "call", [(RESULT_PROPERTY, {"technique": "a"})], worker=None)
    collector.pytest_runtest_logreport(local)  # type: ignore[arg-type]
    assert recorded == []


def test_worker_sends_plain_json_data(tmp_path: Path) -> None:
    worker = SimpleNamespace(workerinput={"workerid": "gw0"})
    controller = SimpleNamespace()
    assert is_xdist_worker(worker) and not is_xdist_worker(controller)  # type: ignore[arg-type]
    data = {
        "user_properties": [
            (RESULT_PROPERTY, {"path": tmp_path, "shape": (2, 3), "metrics": {"max_abs": float("nan")}}),
            ("other", {"kept": tmp_path}),
        ]
    }
    collector = XdistResults(lambda _: None)
    hook = collector.pytest_report_to_serializable(worker, None)  # type: ignore[arg-type]
    next(hook)
    with pytest.raises(StopIteration) as done:
        hook.send(data)
    sent = done.value.value["user_properties"]
    assert sent[0][1]["path"] == str(tmp_path) and sent[0][1]["shape"] == [2, 3]  # what execnet can send
    assert sent[0][1]["metrics"]["max_abs"] != sent[0][1]["metrics"]["max_abs"]  # NaN stays NaN
    assert sent[1] == ("other", {"kept": tmp_path})  # not ours: untouched
