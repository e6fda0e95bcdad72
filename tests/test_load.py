"""Benchmark 13's load generator: a recorded trial replayed by simulated workers makes the recorded calls.

The recording runs the real worker on a small trial (2 repeats of 5 epochs); the
replay runs 1 and 4 workers directly and 4 through ``sweep proxy``, with trials of
1 s, on a PostgreSQL database of its own. Skipped without ``SWEEP_TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from benchmarks import BENCHMARKS
from benchmarks.harness import Result
from benchmarks.load import Ids, add_rows, decode, expected, load_database, measure, percentile, ratios, record_script
from tests.helpers import POSTGRES_ENV

FIELDS = {
    "path", "workers", "processes", "trial_seconds", "heartbeat_s", "measured_trials", "trials_per_s",
    "ideal_trials_per_s", "of_ideal", "storage_s_per_trial", "beat_storage_s_per_trial", "calls_per_trial",
    "transactions_per_trial", "beat_calls_per_trial", "faithful_trials", "latency_ms", "connections_peak",
    "cpu", "saturated", "machine_busy", "failed_trials", "outage_waits",
}  # fmt: skip


def test_ids_become_placeholders_and_come_back() -> None:
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    ids = Ids()
    study = ids.encode("get_all_trials", {"study_id": 7, "deepcopy": False, "states": (TrialState.COMPLETE,)})
    ids.learn("create_new_trial", 12)
    param = ids.encode("set_trial_param", {"trial_id": 12, "param_name": "x", "param_value_internal": 0.5,
                                           "distribution": FloatDistribution(0.0, 1.0)})  # fmt: skip
    note = ids.encode("set_study_system_attr", {"study_id": 7, "key": "dashboard:12:note_ver", "value": 1})
    assert json.loads(json.dumps([study, param, note])) == [study, param, note]  # a script is plain JSON

    mine = {"study": 3, "trial": 40}
    assert decode(study, mine) == {"study_id": 3, "deepcopy": False, "states": (TrialState.COMPLETE,)}
    assert decode(param, mine) == {"trial_id": 40, "param_name": "x", "param_value_internal": 0.5,
                                   "distribution": FloatDistribution(0.0, 1.0)}  # fmt: skip
    assert decode(note, mine)["key"] == "dashboard:40:note_ver"
    with pytest.raises(Exception, match="neither its study nor itself"):
        ids.encode("get_trial", {"trial_id": 13})


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile([2.0], 0.99)) == (50.0, 99.0, 2.0)


def test_the_benchmark_is_registered() -> None:
    assert BENCHMARKS["load"] == "benchmarks.load"


@pytest.fixture
def postgres_base() -> str:
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set: the load generator needs a PostgreSQL server")
    return base


def test_replayed_trials_make_the_recorded_calls_and_transactions(postgres_base: str, tmp_path: Path) -> None:
    with load_database(postgres_base) as (url, _, _, _):
        script = record_script(url, tmp_path, repeats=2, epochs=5, epoch_seconds=0.02)
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script), encoding="utf-8")

    report = measure(base_url=postgres_base, folder=tmp_path, workers=[1, 4], paths=["direct", "proxy"],
                     skip=[("proxy", 1)], trial_seconds=1.0, trials=1, script=path)  # fmt: skip

    want = {p: expected(r) for p, r in script["paths"].items()}
    assert want["direct"]["transactions"]["write_held"] >= 2  # the held writes are in the recording
    assert "write_held" not in want["proxy"]["calls"]  # through the proxy each write is a call
    for key, runs in report["configs"].items():
        (run,) = runs
        assert set(run) >= FIELDS, FIELDS - set(run)
        assert run["measured_trials"] >= run["workers"], key
        assert run["faithful_trials"] == run["measured_trials"], (key, run["calls_per_trial"], run["errors"])
        path_ = "direct" if key.startswith("direct") else "proxy"
        assert run["calls_per_trial"] == {k: float(v) for k, v in sorted(want[path_]["calls"].items())}
        if path_ == "direct":
            assert run["transactions_per_trial"] == {
                k: float(v) for k, v in sorted(want[path_]["transactions"].items())
            }
            assert run["beat_calls_per_trial"].get("record_heartbeat", 0) >= 1  # Optuna's beat at the trial's start
        assert run["connections_peak"] >= 1
        assert run["trials_per_s"] > 0 and run["ideal_trials_per_s"] == run["workers"] / 1.0
        assert {"p50", "p99", "n"} == set(run["latency_ms"]["get_all_trials"])
    found: dict[str, Any] = ratios(report)
    assert found["n"] == 4 and {"direct_storage", "proxy_throughput"} <= set(found)
    res = Result("load", "13. load")
    add_rows(res, report)
    assert [r.measure for r in res.rows][:2] == ["direct storage time per trial, 4 workers / 1",
                                                 "trials/s through proxy, 4 workers / direct"]  # fmt: skip
