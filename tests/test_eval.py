"""`make eval` end to end in its quick mode: its own tritonserver over two model versions, redis-server, the
embedded Qdrant engine and a gateway; the report, its numbers and its figures."""

import json
from pathlib import Path

import pytest

from evaluation.__main__ import main as run_evaluation
from evaluation.diversity import SETTINGS
from evaluation.personalisation import APPROACHES, ARMS, METHODS
from evaluation.run import QUICK
from tests.model_versions import MODEL_NAME, two_version_repository

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("two_torch_threads")]

FIGURES = ("precision_at_k.png", "per_category.png", "confusion.png", "personalisation.png", "latency.png",
           "examples.png")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The quick evaluation's Markdown report and its numbers."""
    repository = two_version_repository(tmp_path_factory.mktemp("repository"))
    out = tmp_path_factory.mktemp("reports")
    path = run_evaluation(["--quick", "--repository", str(repository), "--out", str(out),
                           "--work-dir", str(tmp_path_factory.mktemp("work"))])
    return path, json.loads((out / "quality.json").read_text())


def test_every_served_version_is_measured_through_the_gateway_after_the_alias_moved(report) -> None:
    _, numbers = report
    versions = numbers["versions"]
    assert [v["version"] for v in versions] == ["1", "2"]
    for version in versions:
        assert version["model"].startswith(f"{MODEL_NAME}/{version['version']} ")
        served = version["served"]
        assert set(served) == {str(k) for k in QUICK.ks}
        for values in served.values():
            assert 0 <= values["recall"] <= values["hit"] <= 1
            assert values["precision"] <= values["hit"]
        assert served["10"]["precision"] >= 0.5, "ImageNet features retrieve mostly the query's category"
        assert set(version["per_category"]) and len(version["confusion"]) == 10


def test_the_served_path_agrees_with_in_process_embeddings(report) -> None:
    _, numbers = report
    for version in numbers["versions"]:
        assert version["catalog_vector_deviation"] <= 1e-4
        assert version["top10_overlap"] >= 0.95
        assert abs(version["served"]["10"]["precision"] - version["in_process"]["10"]["precision"]) <= 0.01


def test_diversity_settings_are_measured_and_do_what_they_say(report) -> None:
    _, numbers = report
    for version in numbers["versions"]:
        diversity = version["diversity"]
        assert set(diversity) == set(SETTINGS)
        similarity = {name: measured["intra_list_similarity"] for name, measured in diversity.items()}
        assert similarity["MMR lambda 0.5"] < similarity["ranking order"]
        assert diversity["at most 5 per category"]["categories_per_list"] >= 2


def test_personalisation_and_load_are_measured(report) -> None:
    _, numbers = report
    assert [p["version"] for p in numbers["personalisation"]] == ["1", "2"]
    for personalisation in numbers["personalisation"]:
        assert set(personalisation["test"]) == set(METHODS)
        assert personalisation["test_steps"] == QUICK.test_shoppers * QUICK.test_steps
        assert len(personalisation["validation"]) == 216 + 4, "two tuning stages"
        assert set(personalisation["approaches"]) == set(APPROACHES)
        assert personalisation["served_agreement"] == 1.0, "served lists are the offline ranking of the same inputs"
        assert personalisation["reasons"]["visually_similar"] == 1.0, "every item gives the visual reason"
        assert set(personalisation["reasons"]) == {"visually_similar", "similar_to_viewed", "viewed_category",
                                                   "popular", "diversity", "boosted"}
        arms = personalisation["experiments"]
        assert set(arms) == set(ARMS)
        assert sum(arm["predictions"] for arm in arms.values()) == personalisation["test_steps"]
        assert sum(arm["shoppers"] for arm in arms.values()) == QUICK.test_shoppers, "each shopper in one arm"
        for name, arm in arms.items():
            lists_per_step = 3 if name == ARMS[0] else 1  # the first arm also ranks (a) and (c)
            assert arm["lists"] == lists_per_step * personalisation["test_steps"], name
            assert arm["views"] > arm["predictions"], f"{name}: the histories, then one view per step"
            assert 0 <= arm["ndcg"] <= arm["hit"] <= 1
        assert personalisation["reasons"]["diversity"] == 0, "the ranking order unless a request asks for diversity"
        assert personalisation["own_views_weights"]["popularity"] == 0
        assert all(0 <= scores["ndcg"] <= scores["hit"] <= 1 for scores in personalisation["test"].values())
    baselines = [p["test"][method] for p in numbers["personalisation"] for method in ("most_viewed",
                                                                                      "category_popularity")]
    assert baselines[:2] == baselines[2:], "the non-visual baselines do not depend on the model version"
    for version in numbers["versions"]:
        load = version["load"]
        assert load["requests"] > 0
        assert {"decode", "embed", "search", "history", "total"} <= set(load["stages"])


def test_the_report_names_the_goals_the_setting_and_shows_every_figure(report) -> None:
    path, numbers = report
    text = path.read_text()
    for goal in numbers["goals"]:
        assert goal["goal"] in text
    assert "*test* split" in text and "train split" in text
    for figure in FIGURES:
        assert (path.parent / figure).stat().st_size > 1000
        assert f"]({figure})" in text
