"""The scrapes-to-OpenMetrics step of the dashboard render (hack/dashboard.py): what promtool backfills."""

from __future__ import annotations

from dashboard import openmetrics, panel_queries

SCRAPE = """# HELP rlhf_job_kl KL.
# TYPE rlhf_job_kl gauge
rlhf_job_kl{namespace="a",rlhfjob="tiny"} 0.5
rlhf_job_gpu_seconds_total{namespace="a",rlhfjob="tiny",stage="policy"} 60.0
rlhf_operator_jobs{phase="Running"} 1.0
"""


def test_each_family_is_one_block_in_time_order_with_timestamps() -> None:
    text = openmetrics([(20.0, SCRAPE.replace("0.5", "0.7")), (10.0, SCRAPE)])
    assert text.splitlines() == [
        "# TYPE rlhf_job_kl unknown",
        'rlhf_job_kl{namespace="a",rlhfjob="tiny"} 0.5 10.000',
        'rlhf_job_kl{namespace="a",rlhfjob="tiny"} 0.7 20.000',
        "# TYPE rlhf_job_gpu_seconds_total unknown",
        'rlhf_job_gpu_seconds_total{namespace="a",rlhfjob="tiny",stage="policy"} 60.0 10.000',
        'rlhf_job_gpu_seconds_total{namespace="a",rlhfjob="tiny",stage="policy"} 60.0 20.000',
        "# EOF",
    ]


def test_panel_queries_set_the_dashboards_variables_to_all() -> None:
    queries = panel_queries(
        {"panels": [{"targets": [{"expr": 'x{namespace=~"$namespace", rlhfjob=~"$rlhfjob"}'}]}]}
    )
    assert queries[0][1] == 'x{namespace=~".*", rlhfjob=~".*"}'
