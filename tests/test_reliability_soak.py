"""A short soak of the whole stack as `make soak` runs it: zero errors, flat memory and descriptors."""

import pytest

from stack.soak import MAX_FD_GROWTH, MAX_RSS_GROWTH_MIB, Options, soak, write_report

pytestmark = pytest.mark.slow


async def test_a_short_soak_has_no_errors_and_flat_resources(tmp_path):
    """At half the measured capacity rather than `make soak`'s 70 %: the test may share its 2 cores."""
    options = Options(seconds=40, fraction=0.5, catalog=100, probe_seconds=8, warmup_seconds=8, windows=4,
                      report_dir=tmp_path / "reports")
    report = await soak(options, tmp_path / "data")
    print(write_report(report, options.report_dir).with_suffix(".md").read_text())
    assert report["requests"] > 0.9 * report["offered_rps"] * options.seconds
    assert not report["errors"]
    assert report["growth_after_warmup"]["gateway"]["rss_mib"] < MAX_RSS_GROWTH_MIB
    assert report["growth_after_warmup"]["gateway"]["fds"] <= MAX_FD_GROWTH
