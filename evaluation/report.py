"""The evaluation report: Markdown with the figures beside it, and the numbers as JSON."""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from catalog_sources.fashion_mnist import CLASS_NAMES
from evaluation.diversity import QUERY_STRIDE
from evaluation.metrics import RETRIEVAL_METRICS, most_confused
from evaluation.personalisation import METHODS
from evaluation.plots import METHOD_LABELS
from evaluation.retrieval import overlap_at
from evaluation.run import Evaluation, PersonalisationResult, VersionResult
from training.card import CARD_JSON

GOAL_V1 = 0.75
GOAL_V2 = 0.85
GOAL_LIFT = 0.25
METRIC_NAMES = {"precision": "precision", "recall": "recall", "map": "mAP", "hit": "hit"}


def lift_over_visual(test: dict[str, dict[str, float]], method: str) -> float:
    """Relative hit@10 gain of ``method`` over the visual-only list."""
    return test[method]["hit"] / max(test["visual"]["hit"], 1e-9) - 1


def goals(evaluation: Evaluation) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) for the issue's goals that this evaluation measured."""
    rows = []
    by_version = {result.version: result for result in evaluation.versions}
    for version, goal in (("1", GOAL_V1), ("2", GOAL_V2)):
        if version in by_version:
            precision = by_version[version].served_metrics[10]["precision"]
            rows.append((f"precision@10 of v{version} >= {goal}", f"{precision:.3f}", precision >= goal))
    for result in evaluation.personalisation:
        test = result.test
        lift = lift_over_visual(test, "history_aware")
        best_baseline = max(test["most_viewed"]["hit"], test["category_popularity"]["hit"])
        rows.append((f"v{result.version}: (b) over (a), relative hit@10 lift >= {GOAL_LIFT:.0%}", f"{lift:+.1%}",
                     lift >= GOAL_LIFT))
        own_lift = lift_over_visual(test, "own_views_only")
        rows.append((f"v{result.version}: (b) without popularity over (a), relative hit@10 lift >= {GOAL_LIFT:.0%}",
                     f"{own_lift:+.1%}", own_lift >= GOAL_LIFT))
        rows.append((f"v{result.version}: served lists equal the offline ranking of the same candidates",
                     f"{result.served_agreement:.1%} of lists", result.served_agreement == 1.0))
        rows.append((f"v{result.version}: (b) beats (d) on hit@10",
                     f"{test['history_aware']['hit']:.3f} vs {best_baseline:.3f}",
                     test["history_aware"]["hit"] > best_baseline))
    return rows


def retrieval_table(results: list[VersionResult], ks: tuple[int, ...]) -> str:
    header = "| model | K | " + " | ".join(METRIC_NAMES[m] + "@K" for m in RETRIEVAL_METRICS) + " |"
    lines = [header, "|" + " --- |" * (2 + len(RETRIEVAL_METRICS))]
    for result in results:
        for k in ks:
            values = " | ".join(f"{result.served_metrics[k][m]:.3f}" for m in RETRIEVAL_METRICS)
            lines.append(f"| {result.model} | {k} | {values} |")
    return "\n".join(lines)


def category_table(results: list[VersionResult]) -> str:
    lines = ["| category | " + " | ".join(f"P@10 v{r.version} | mAP@10 v{r.version}" for r in results) + " |",
             "|" + " --- |" * (1 + 2 * len(results))]
    for name in CLASS_NAMES:
        cells = " | ".join(f"{r.per_category[name]['precision']:.3f} | {r.per_category[name]['map']:.3f}"
                           for r in results if name in r.per_category)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def diversity_section(results: list[VersionResult]) -> str:
    lines = ["| model | setting | precision@10 | intra-list similarity | categories per list | catalog coverage |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines += [f"| {r.model} | {name} | {m['precision']:.3f} | {m['intra_list_similarity']:.3f} | "
                  f"{m['categories_per_list']:.2f} | {m['coverage']:.1%} |" for name, m in r.diversity.items()]
    return f"""### Diversity and grouping

Every {QUERY_STRIDE}th query again, anonymous, with each `Diversity` setting of the request: maximal marginal
relevance (`mmr_lambda`) and at most 5 products per category (`group_by: "category"`). Intra-list similarity is the
mean cosine similarity between a list's products (stored vectors); coverage is the share of the catalog shown in
any list.

{chr(10).join(lines)}
"""


def cross_check_table(results: list[VersionResult]) -> str:
    lines = ["| model | P@10 served | P@10 in-process | mAP@10 served | mAP@10 in-process | top-10 overlap | "
             "catalog vectors checked | max deviation |", "|" + " --- |" * 8]
    for r in results:
        lines.append(
            f"| {r.model} | {r.served_metrics[10]['precision']:.4f} | {r.in_process_metrics[10]['precision']:.4f} | "
            f"{r.served_metrics[10]['map']:.4f} | {r.in_process_metrics[10]['map']:.4f} | "
            f"{overlap_at(r.served.ids, r.in_process.ids, 10):.4f} | {r.in_process.checked_catalog_vectors} | "
            f"{r.in_process.catalog_deviation:.1e} |")
    return "\n".join(lines)


def latency_table(results: list[VersionResult]) -> str:
    lines = ["| model | stage | p50 ms | p90 ms | p99 ms |", "| --- | --- | --- | --- | --- |"]
    for r in results:
        for stage, quantiles in r.load.stages.items():
            lines.append(f"| {r.model} | {stage} | " + " | ".join(f"{1000 * v:.1f}" for v in quantiles.values()) + " |")
        lines.append(f"| {r.model} | **client, end to end** | "
                     + " | ".join(f"{1000 * v:.1f}" for v in r.load.client.values()) + " |")
    return "\n".join(lines)


def personalisation_section(evaluation: Evaluation) -> str:
    results = evaluation.personalisation
    if not results:
        return ""
    config = results[0].shopper_config
    header = "| method (test shoppers) | " + " | ".join(f"hit@10 v{r.version} | NDCG@10 v{r.version}"
                                                     for r in results) + " |"
    rows = "\n".join(f"| {METHOD_LABELS[m]} | " + " | ".join(f"{r.test[m]['hit']:.3f} | {r.test[m]['ndcg']:.3f}"
                                                            for r in results) + " |" for m in METHODS)
    return f"""## Personalisation

**Simulator** (`evaluation/shoppers.py`, seeded): each shopper likes 1 to {config.max_styles} hidden *styles*: a
prototype product and its {config.style_size - 1} nearest look-alikes of the same category, where "look" is a
product's pixels projected on the catalog's first 32 principal components, so neither model version defines it.
Products have a hidden log-normal appeal. A session has {config.min_views} to {config.max_views} views: each next
view is one of the {config.look_alikes} nearest look-alikes of the current product (p = {config.p_look_alike}), a
product of one of the shopper's styles (p = {config.p_taste}) or any product (otherwise), drawn by appeal, never
twice. The rankers see only the views. Separate seeds give the shoppers behind the popularity counts
({evaluation.config.popularity_shoppers}), the validation shoppers ({evaluation.config.validation_shoppers}) and
the test shoppers ({evaluation.config.test_shoppers}); every model version meets the same shoppers.

**Task**: a shopper has viewed a history and is looking at its last product; the next view must be among the top
10. Test: the last {evaluation.config.test_steps} views of each test shopper, each held out in turn
({results[0].test_steps} predictions). Methods (a)-(c) are Recommend calls to a gateway with the chosen weights,
the histories recorded through RecordView; (d) are computed from the popularity shoppers' views. The ranker's
popularity part counts views by all shoppers in Redis: before each version is measured Redis is emptied and
given the popularity shoppers' views (the same crowd as (d)); the validation and test shoppers' views add to
them as they are recorded, never a view before it happens. "(b) without popularity" is the gateway's second
experiment arm, whose weights leave popularity out: what the shopper's own views add to (a).

**Tuning** on the last {evaluation.config.test_steps} views of each validation shopper, each step under a user of
its own ({results[0].validation_steps} predictions), in two stages: the shopper's own signals with popularity 0
(visual 1; history weight, temperature, category weight and half-life on a grid), then popularity weights on top
of the best of those; {len(results[0].validation)} settings in all, the best hit@10 (then NDCG@10) is chosen. An
in-process pipeline over the same Triton, Qdrant and Redis gives each step's candidates once
(`Pipeline.ranking_inputs`) and every setting ranks them with the served ranker.

{chr(10).join(tuning_line(r) for r in results)}

{header}
|{" --- |" * (1 + 2 * len(results))}
{rows}

{chr(10).join(own_views_line(r) for r in results)}

**Ways of using the own views**, compared on the test steps at the chosen own-views weights (popularity 0): the
in-process pipeline's candidates at each step, ranked offline; the first row is what the gateway serves, and
the served lists equal these offline rankings ({agreement_text(results)}).

{approaches_table(results)}

**Experiment breakdown.** (b) and "(b) without popularity" are two arms of one experiment of the gateway, each asked
for by name at every step above. Split as the gateway assigns live traffic (a hash of the user id, 50/50), each
arm's shoppers get its lists only; hit@10 over each arm's own predictions, and the gateway's counters of the lists
it served and the views it recorded per arm (`recsys_recommendations_total`, `recsys_feedback_total`; the first
arm also serves the (a) and (c) lists):

{experiments_table(results)}

![personalisation](personalisation.png)
"""


def experiments_table(results: list[PersonalisationResult]) -> str:
    lines = ["| version | arm | shoppers | predictions | hit@10 | NDCG@10 | lists counted | views counted |",
             "|" + " --- |" * 8]
    lines += [f"| v{r.version} | {arm} | {m['shoppers']:.0f} | {m['predictions']:.0f} | {m['hit']:.3f} | "
              f"{m['ndcg']:.3f} | {m['lists']:.0f} | {m['views']:.0f} |"
              for r in results for arm, m in r.experiments.items()]
    return "\n".join(lines)


APPROACH_NOTES = {
    "soft maximum, local scaling (served)": "recency-weighted soft maximum of the similarities to the views, "
                                            "minus the candidate's neighbour similarity",
    "closest view": "temperature 0.005: the similarity to the closest view",
    "mean of the views": "temperature 10: the recency-weighted mean similarity, as one mean direction gives",
    "without local scaling": "the neighbour similarity left out",
    "query search only": "candidates from the search around the query alone, none from the recent views",
}


def approaches_table(results: list[PersonalisationResult]) -> str:
    lines = ["| approach | " + " | ".join(f"hit@10 v{r.version} | lift over (a) v{r.version}" for r in results)
             + " | what changes |", "|" + " --- |" * (2 + 2 * len(results))]
    for approach, note in APPROACH_NOTES.items():
        hits = [(r.approaches[approach]["hit"], r.test["visual"]["hit"]) for r in results]
        lines.append(f"| {approach} | " + " | ".join(f"{hit:.3f} | {hit / max(visual, 1e-9) - 1:+.1%}"
                                                     for hit, visual in hits) + f" | {note} |")
    return "\n".join(lines)


def agreement_text(results: list[PersonalisationResult]) -> str:
    return ", ".join(f"v{r.version}: {r.served_agreement:.1%} of the (b) lists" for r in results)


def own_views_line(result: PersonalisationResult) -> str:
    """What the shopper's own views add to the visual list, without popularity."""
    test, w = result.test, result.own_views_weights
    return (f"- v{result.version}: own views alone lift hit@10 from {test['visual']['hit']:.3f} to "
            f"{test['own_views_only']['hit']:.3f} ({lift_over_visual(test, 'own_views_only'):+.1%}; history "
            f"{w.history:g}, temperature {w.history_temperature:g}, category {w.category:g}, half-life "
            f"{w.half_life_views:g} views); with popularity, {test['history_aware']['hit']:.3f}. Reasons given in "
            "the (b) lists: " + ", ".join(f"{kind} {share:.0%} of items" for kind, share in result.reasons.items())
            + ".")


def tuning_line(result: PersonalisationResult) -> str:
    """The weights chosen for one version, with their validation scores and those of the defaults."""
    chosen = dict(result.validation)[result.weights]
    default = next((scores for weights, scores in result.validation if weights == result.default_weights), None)
    w = result.weights
    line = (f"- v{result.version}: history {w.history:g}, temperature {w.history_temperature:g}, category "
            f"{w.category:g}, popularity {w.popularity:g}, half-life {w.half_life_views:g} views (validation hit@10 "
            f"{chosen['hit']:.3f}, "
            f"NDCG@10 {chosen['ndcg']:.3f})")
    if default is not None:
        line += f"; the default weights scored {default['hit']:.3f} / {default['ndcg']:.3f}"
    return line + "."


def training_section(repository: Path, versions: list[VersionResult]) -> str:
    parts = []
    for result in versions:
        card = repository / result.version / CARD_JSON
        if not card.exists():
            continue
        record = json.loads(card.read_text())
        best = record["epochs"][record["best_epoch"] - 1]["validation_precision"]
        minutes = record["seconds"]["total"] / 60
        parts.append(f"- **{record['model']}**: fine-tuned on {record['train_images']} train-split images for "
                     f"{record['best_epoch']} of {len(record['epochs'])} epochs in {minutes:.1f} min; validation "
                     f"precision@10 {record['pretrained_precision']:.3f} -> {best:.3f} (training card: "
                     f"`{card.with_name('training_card.md')}`).")
    return "\n## Transfer learning\n\n" + "\n".join(parts) + "\n" if parts else ""


def markdown(evaluation: Evaluation, repository: Path) -> str:
    config = evaluation.config
    goal_rows = "\n".join(f"| {goal} | {measured} | {'yes' if met else '**no**'} |"
                          for goal, measured, met in goals(evaluation))
    confused = "\n".join(
        f"- {r.model}: " + "; ".join(f"{query} -> {result} {share:.0%}"
                                     for query, result, share in most_confused(r.confusion, CLASS_NAMES, 4))
        for r in evaluation.versions)
    runtime = ", ".join(f"{phase} {seconds / 60:.1f} min" for phase, seconds in evaluation.seconds.items())
    models_seen = "; ".join(f"v{r.version}: {', '.join(sorted(set(r.served.models)))}" for r in evaluation.versions)
    return f"""# Recommendation quality

Generated by `make eval` (`python -m evaluation`). Figures are beside this file.

| goal | measured | met |
| --- | --- | --- |
{goal_rows}

## Setting

- **Catalog**: the first {config.catalog_size:,} images of the Fashion-MNIST *train* split
  ({', '.join(f'{name} {count}' for name, count in zip(CLASS_NAMES, np.bincount(evaluation.catalog_labels,
                                                                                  minlength=len(CLASS_NAMES))))}).
- **Queries**: the first {config.queries_per_category} images of each category of the *test* split
  ({len(evaluation.query_indices):,} queries). **Held out**: fine-tuning reads only the train split
  (`training/data.py` loads it and nothing else), so no query image was seen in training; the catalog, like
  the products of a shop, is what the model was fine-tuned on.
- **Served path**: each query is a PNG sent to `Recommend(image, limit={max(config.ks)})` of a gateway over a real
  tritonserver, the embedded Qdrant engine (exact search) and redis-server, without a user, so the order is the
  visual one. The versions were switched by pointing the catalog alias at each version's collection, as a rollout
  does; the responses' `model`: {models_seen}.
- A result is relevant when it has the query's category. Definitions in `evaluation/metrics.py`; recall@K is
  small by construction (each category has ~{config.catalog_size // len(CLASS_NAMES)} catalog products), hit@K is
  what metric-learning papers call Recall@K.

## Visual retrieval

{retrieval_table(evaluation.versions, config.ks)}

![precision at K](precision_at_k.png)

### Per category (K = 10)

{category_table(evaluation.versions)}

![per category](per_category.png)

**Most confused** (share of the top 10 of a category's queries that belong to another category):

{confused}

![confusion](confusion.png)

### Cross-check against in-process embeddings

The same queries, decoded by the same function, embedded by each version's `model.pt` with torch in this process
and searched by brute force over the vectors Qdrant stored; {config.catalog_check} stored vectors were recomputed
in-process from the catalog images.

{cross_check_table(evaluation.versions)}

![examples](examples.png)

{diversity_section(evaluation.versions)}{personalisation_section(evaluation)}
## Processing time

A closed-loop load run per version: {config.load_concurrency} clients send image queries with a user id (so the
history stage runs) for {config.load_seconds:g} s. Stage percentiles from the gateway's Prometheus histograms
(interpolated within buckets), client latency measured exactly.

{latency_table(evaluation.versions)}

{chr(10).join(f"- {r.model}: {r.load.requests} requests, {r.load.throughput:.1f} req/s, {r.load.errors} errors; "
              f"catalog embedded in {r.index_seconds / 60:.1f} min" for r in evaluation.versions)}

![latency](latency.png)
{training_section(repository, evaluation.versions)}
## Runtime of this evaluation

{runtime}.
"""


def numbers(evaluation: Evaluation) -> dict[str, object]:
    """The report's numbers as JSON-able data."""
    return {
        "config": asdict(evaluation.config),
        "goals": [{"goal": goal, "measured": measured, "met": met} for goal, measured, met in goals(evaluation)],
        "versions": [{
            "version": r.version, "model": r.model, "served": r.served_metrics, "in_process": r.in_process_metrics,
            "top10_overlap": overlap_at(r.served.ids, r.in_process.ids, 10),
            "catalog_vector_deviation": r.in_process.catalog_deviation, "per_category": r.per_category,
            "confusion": r.confusion.round(4).tolist(),
            "load": {"requests": r.load.requests, "errors": r.load.errors, "throughput": r.load.throughput,
                     "client": r.load.client, "stages": r.load.stages},
            "index_seconds": r.index_seconds, "diversity": r.diversity} for r in evaluation.versions],
        "personalisation": [{
            "version": p.version, "weights": asdict(p.weights), "own_views_weights": asdict(p.own_views_weights),
            "test": p.test, "test_steps": p.test_steps,
            "validation_steps": p.validation_steps,
            "approaches": p.approaches, "served_agreement": p.served_agreement, "reasons": p.reasons,
            "experiments": p.experiments,
            "validation": [{"weights": asdict(w), **scores} for w, scores in p.validation]}
            for p in evaluation.personalisation],
        "seconds": evaluation.seconds,
    }


def write_report(evaluation: Evaluation, repository: Path, out: Path) -> Path:
    """Writes quality.md and quality.json into ``out`` (the figures must be there already)."""
    (out / "quality.json").write_text(json.dumps(numbers(evaluation), indent=2) + "\n")
    path = out / "quality.md"
    path.write_text(markdown(evaluation, repository))
    return path
