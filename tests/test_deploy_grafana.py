"""deploy/grafana checked structurally (Grafana itself is not installable here); test_prometheus.py runs
every panel's query against a real Prometheus."""

import json
from itertools import combinations
from pathlib import Path

import pytest
import yaml

GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "state-timeline", "text"}
GRID_COLUMNS = 24
REQUIRED_METRICS = (  # what SREs must find on the dashboards
    "recsys_requests_total", "recsys_request_duration_seconds_bucket", "recsys_stage_duration_seconds_bucket",
    "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us", "nv_inference_exec_count",
    "recsys_degraded_responses_total", "recsys_catalog_products", "recsys_products_ingested_total",
    "recsys_recommendations_total", "recsys_feedback_total",
)


def datasource_uids() -> set[str]:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    return {source["uid"] for source in provisioned["datasources"]}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_panels_are_well_formed_and_use_the_provisioned_datasource(path: Path):
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids must be unique"
    uids = datasource_uids()
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= GRID_COLUMNS and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in uids and panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] in uids, panel["title"]
    for first, second in combinations(panels, 2):
        a, b = first["gridPos"], second["gridPos"]
        overlap = a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] \
            and b["y"] < a["y"] + a["h"]
        assert not overlap, f"{first['title']} overlaps {second['title']}"


def test_the_dashboards_cover_requests_stages_triton_degradation_and_catalog():
    queries = " ".join(target["expr"] for path in DASHBOARDS for panel in json.loads(path.read_text())["panels"]
                       for target in panel.get("targets", []))
    missing = [metric for metric in REQUIRED_METRICS if metric not in queries]
    assert not missing, missing
    assert len({json.loads(path.read_text())["uid"] for path in DASHBOARDS}) == len(DASHBOARDS)

