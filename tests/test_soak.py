"""The chaos soak's short form: three hosts, one private PostgreSQL, one fault of each kind.

The hosts are network namespaces on a private bridge (:mod:`tests.netns`); the
soak and its invariants are :mod:`benchmarks.soak`, whose long form is
``python -m benchmarks.soak``. Root only, skipped elsewhere. The same soak
through ``sweep proxy`` costs another minute and more, so it runs only when
``SWEEP_TEST_SOAK_PROXY=1`` is set.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from benchmarks.soak import Fault, SoakConfig, run_soak, unavailable

pytestmark = pytest.mark.slow

SHORT = SoakConfig(
    hosts=3,
    workers_per_host=1,  # three TensorFlow processes on two cores: the long form runs two per host
    faults_per_kind=1,
    # The five faults take about 25 s at the least (a stopped or cut worker stays so past the 5 s grace
    # period), in which three workers finish up to 20 trials on an idle machine and about 7 on a busy one;
    # each fault is due by its share of the first 21 trials (benchmarks.soak), the last once 18 are done.
    n_trials=28,
    gap_s=(0.3, 1.0),
    hold_s=(0.5, 1.5),
    pause_s=(0.5, 1.5),
    settle_s=15.0,
    timeout_s=400.0,
)


@pytest.fixture(autouse=True)
def _possible() -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)


def test_one_fault_of_each_kind_on_three_hosts_breaks_no_invariant() -> None:
    report = run_soak(SHORT)
    print(report.table())
    assert {f.kind for f in report.injected} == set(Fault), report.table()
    assert report.ok, report.table()


@pytest.mark.skipif(not os.environ.get("SWEEP_TEST_SOAK_PROXY"), reason="set SWEEP_TEST_SOAK_PROXY=1 to soak the proxy")
def test_one_fault_of_each_kind_through_the_proxy_breaks_no_invariant() -> None:
    report = run_soak(replace(SHORT, proxy=True))
    print(report.table())
    assert {f.kind for f in report.injected} == set(Fault), report.table()
    assert report.ok, report.table()
