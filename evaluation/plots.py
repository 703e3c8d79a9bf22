"""The report's figures, written as PNG files (matplotlib, no display needed)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from catalog_sources.fashion_mnist import CLASS_NAMES
from evaluation.personalisation import METHODS
from evaluation.run import Evaluation

EXAMPLE_QUERIES = 6
EXAMPLE_RESULTS = 5
METHOD_LABELS = {"visual": "(a) visual only", "history_aware": "(b) history-aware",
                 "own_views_only": "(b) without popularity",
                 "history_only": "(c) history only", "most_viewed": "(d) most viewed",
                 "category_popularity": "(d) category popularity"}


def save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def precision_curves(evaluation: Evaluation, path: Path) -> Path:
    """Precision@K and mAP@K against K, one line per model version."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for result in evaluation.versions:
        ks = sorted(result.served_metrics)
        for axis, metric in zip(axes, ("precision", "map")):
            axis.plot(ks, [result.served_metrics[k][metric] for k in ks], marker="o", label=result.model)
    for axis, title in zip(axes, ("precision@K", "mAP@K")):
        axis.set(title=f"{title} (test queries, served path)", xlabel="K", ylim=(0, 1), xticks=sorted(
            evaluation.config.ks))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return save(figure, path)


def per_category_bars(evaluation: Evaluation, path: Path) -> Path:
    """Precision@10 per category, bars side by side per model version."""
    figure, axis = plt.subplots(figsize=(11, 4))
    width = 0.8 / max(len(evaluation.versions), 1)
    positions = np.arange(len(CLASS_NAMES))
    for offset, result in enumerate(evaluation.versions):
        values = [result.per_category.get(name, {}).get("precision", 0.0) for name in CLASS_NAMES]
        axis.bar(positions + offset * width, values, width, label=result.model)
    axis.set_xticks(positions + width * (len(evaluation.versions) - 1) / 2, CLASS_NAMES, rotation=20)
    axis.set(title="precision@10 per category", ylim=(0, 1))
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    return save(figure, path)


def confusion_maps(evaluation: Evaluation, path: Path) -> Path:
    """Per version, the share of each category among the top-10 results of each query category."""
    figure, axes = plt.subplots(1, len(evaluation.versions), figsize=(6 * len(evaluation.versions), 5.2),
                                squeeze=False)
    for axis, result in zip(axes[0], evaluation.versions):
        image = axis.imshow(result.confusion, vmin=0, vmax=1, cmap="Blues")
        axis.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=60, fontsize=8)
        axis.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=8)
        axis.set(title=f"top-10 categories by query category\n{result.model}", xlabel="result", ylabel="query")
        for (row, column), share in np.ndenumerate(result.confusion):
            if share >= 0.05:
                axis.text(column, row, f"{share:.2f}", ha="center", va="center", fontsize=6,
                          color="white" if share > 0.5 else "black")
        figure.colorbar(image, ax=axis, fraction=0.046)
    return save(figure, path)


def personalisation_bars(evaluation: Evaluation, path: Path) -> Path:
    """hit@10 and NDCG@10 of each method on the test shoppers, per model version."""
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    positions = np.arange(len(METHODS))
    width = 0.8 / max(len(evaluation.personalisation), 1)
    for axis, metric in zip(axes, ("hit", "ndcg")):
        for offset, result in enumerate(evaluation.personalisation):
            bars = axis.bar(positions + offset * width, [result.test[method][metric] for method in METHODS],
                            width, label=f"model version {result.version}")
            axis.bar_label(bars, fmt="%.3f", fontsize=6)
        axis.set_xticks(positions + width * (len(evaluation.personalisation) - 1) / 2,
                        [METHOD_LABELS[method] for method in METHODS], rotation=20, fontsize=8)
        axis.set(title=f"{metric}@10 of the next view (test shoppers)")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=8)
    return save(figure, path)


def latency_bars(evaluation: Evaluation, path: Path) -> Path:
    """p50 / p99 of each stage during the load run, per model version."""
    figure, axis = plt.subplots(figsize=(10, 4))
    stages = list(evaluation.versions[0].load.stages)
    width = 0.8 / (2 * len(evaluation.versions))
    positions = np.arange(len(stages))
    for offset, result in enumerate(evaluation.versions):
        for quantile_offset, quantile in enumerate((0.5, 0.99)):
            values = [1000 * result.load.stages[stage][quantile] for stage in stages]
            axis.bar(positions + (2 * offset + quantile_offset) * width, values, width,
                     label=f"{result.model} p{int(quantile * 100)}")
    axis.set_xticks(positions + width * (2 * len(evaluation.versions) - 1) / 2, stages)
    axis.set(title="stage latency during the load run", ylabel="ms")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=7)
    return save(figure, path)


def example_grid(evaluation: Evaluation, query_pixels: np.ndarray, catalog_pixels: np.ndarray, path: Path) -> Path:
    """A few test queries with their top results from each version; green frames share the query's category."""
    queries = np.linspace(0, len(evaluation.query_indices) - 1, EXAMPLE_QUERIES).astype(int)
    columns = 1 + EXAMPLE_RESULTS * len(evaluation.versions)
    figure, axes = plt.subplots(len(queries), columns, figsize=(columns * 1.1, len(queries) * 1.25))
    for row, query in enumerate(queries):
        label = evaluation.query_labels[query]
        show(axes[row, 0], query_pixels[evaluation.query_indices[query]], "black", CLASS_NAMES[label])
        for version_number, result in enumerate(evaluation.versions):
            for rank, product_id in enumerate(result.served.ids[query][:EXAMPLE_RESULTS]):
                index = int(product_id.rsplit("-", 1)[1])
                same = evaluation.catalog_labels[index] == label
                title = f"v{result.version}" if rank == 0 else ""
                show(axes[row, 1 + version_number * EXAMPLE_RESULTS + rank], catalog_pixels[index],
                     "green" if same else "red", title)
    figure.suptitle("test queries (left) and their top results per model version", fontsize=9)
    return save(figure, path)


def show(axis: plt.Axes, pixels: np.ndarray, frame: str, title: str) -> None:
    axis.imshow(pixels, cmap="gray")
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_edgecolor(frame)
        spine.set_linewidth(2.5)
    axis.set_title(title, fontsize=7)


def all_figures(evaluation: Evaluation, query_pixels: np.ndarray, catalog_pixels: np.ndarray, out: Path
                ) -> dict[str, Path]:
    """Every figure of the report, by name."""
    figures = {"precision": precision_curves(evaluation, out / "precision_at_k.png"),
               "per_category": per_category_bars(evaluation, out / "per_category.png"),
               "confusion": confusion_maps(evaluation, out / "confusion.png"),
               "latency": latency_bars(evaluation, out / "latency.png"),
               "examples": example_grid(evaluation, query_pixels, catalog_pixels, out / "examples.png")}
    if evaluation.personalisation:
        figures["personalisation"] = personalisation_bars(evaluation, out / "personalisation.png")
    return figures
