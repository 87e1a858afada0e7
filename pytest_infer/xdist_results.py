"""Results recorded on pytest-xdist workers reach the controller (``pytest -n 2``).

Under xdist the tests run in worker processes: ``InferSession.record`` fills the *worker's* session, and the
controller, which writes the JSON report, the Markdown and the terminal matrix, would see none of it. The
checks also attach each result to the test report (``("infer_result", data)`` in ``user_properties``,
see ``checks.ParityChecks._record``), and xdist sends every report to the controller. So:

* on a worker, :meth:`XdistResults.pytest_report_to_serializable` makes those entries plain JSON data
  before xdist sends them (execnet refuses anything else, and a refused report takes the worker down);
* on the controller, :meth:`XdistResults.pytest_runtest_logreport` records the entries of reports that
  came from a worker, each once (a report's ``user_properties`` holds everything the test recorded so far:
  the setup, call and teardown reports repeat the earlier entries);
* workers write no report at all (:func:`is_xdist_worker`): the controller writes them, once.

Without xdist nothing here acts: reports made in this process carry no ``worker_id``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

RESULT_PROPERTY = "infer_result"


def is_xdist_worker(config: pytest.Config) -> bool:
    """True in a pytest-xdist worker process (xdist gives its config a ``workerinput``)."""
    return hasattr(config, "workerinput")


def worker_of(report: Any) -> str | None:
    """The id of the xdist worker a report came from (``gw0``), None for a report made in this process."""
    worker = getattr(report, "worker_id", None)
    if worker is None and getattr(report, "node", None) is not None:
        worker = getattr(report.node, "workerinput", {}).get("workerid")
    return None if worker is None else str(worker)


def plain(data: Any) -> Any:
    """``data`` as JSON would read it back (what the JSON report would hold anyway: ``default=str``)."""
    return json.loads(json.dumps(data, default=str, allow_nan=True))


class XdistResults:
    """Registered on every run (see the module docstring); ``record`` is ``InferSession.record``."""

    def __init__(self, record: Callable[[dict[str, Any]], None]) -> None:
        self._record = record
        self._taken: dict[tuple[str, str], int] = {}  # (worker, nodeid) -> entries already recorded

    def take(self, report: Any) -> list[dict[str, Any]]:
        """The results in ``report`` not yet recorded, when it came from a worker; [] otherwise."""
        worker = worker_of(report)
        if worker is None:
            return []  # made here: the session recorded these results when the checks ran
        entries = [v for k, v in getattr(report, "user_properties", ()) if k == RESULT_PROPERTY and isinstance(v, dict)]
        key = (worker, report.nodeid)
        seen = self._taken.get(key, 0)
        self._taken[key] = max(seen, len(entries))
        return entries[seen:]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for data in self.take(report):
            self._record(data)

    @pytest.hookimpl(wrapper=True)
    def pytest_report_to_serializable(self, config: pytest.Config, report: Any) -> Any:
        data = yield
        if is_xdist_worker(config) and isinstance(data, dict) and data.get("user_properties"):
            data["user_properties"] = [
                (k, plain(v)) if k == RESULT_PROPERTY else (k, v) for k, v in data["user_properties"]
            ]
        return data
