"""The evaluation run: every served model version through one real gateway, switched by the catalog alias.

Setting (``EvalConfig``): the catalog is the first ``catalog_size`` images of the Fashion-MNIST *train*
split; the queries are the first ``queries_per_category`` images of each category of the *test* split,
which no training code reads. For each version Triton serves, the catalog is embedded into its own
collection (``ops.rollout.build_collection``, resumable), the alias is pointed at it and the gateway
follows, exactly as in a rollout; then the queries run through gRPC, the same retrieval runs in-process
as a cross-check, a short load run measures the stages, and the same simulated shoppers measure
personalisation.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from redis.asyncio import Redis
from tritonclient.grpc.aio import InferenceServerClient

from catalog_sources import products as sources
from catalog_sources.fashion_mnist import CLASS_NAMES, load_split
from evaluation import metrics as measures
from evaluation.diversity import measure_diversity
from evaluation.latency import LoadRun, load_run
from evaluation.personalisation import (
    ARMS,
    METHODS,
    Popularity,
    approach_lists,
    arm_scores,
    one_user_per_step,
    ranked_ids,
    reason_shares,
    record_crowd,
    scores_of,
    served_lists,
    steps_of,
    tune_weights,
)
from evaluation.retrieval import (
    InProcess,
    Served,
    in_process_results,
    png,
    served_results,
    stored_vectors,
    stratified_queries,
    wait_for_model,
)
from evaluation.shoppers import Catalog, ShopperConfig, simulate
from gateway.catalog.aliases import versioned_collection
from gateway.composition import Components
from gateway.config import Settings
from gateway.experiments import BUCKETS, Arm, Experiments
from gateway.serving import Serving, follow_alias
from harness.gateway import RunningGateway, in_process, over
from ops.rollout import build_collection
from ranker import Weights
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
LOAD_USERS = 8
LOAD_USER_VIEWS = 5


@dataclass(frozen=True)
class EvalConfig:
    """How much the evaluation measures; the defaults are what `make eval` runs."""

    catalog_size: int = 6_000
    queries_per_category: int = 200
    ks: tuple[int, ...] = (1, 5, 10, 20)
    validation_shoppers: int = 200
    test_shoppers: int = 400
    popularity_shoppers: int = 2000
    test_steps: int = 3
    load_seconds: float = 20.0
    load_concurrency: int = 4
    catalog_check: int = 500
    seed: int = 0


QUICK = EvalConfig(catalog_size=500, queries_per_category=4, validation_shoppers=12, test_shoppers=12,
                   popularity_shoppers=50, test_steps=2, load_seconds=2.0, load_concurrency=2, catalog_check=10)


@dataclass
class VersionResult:
    """What was measured for one model version."""

    version: str
    model: str
    served: Served
    in_process: InProcess
    served_metrics: dict[int, dict[str, float]]
    in_process_metrics: dict[int, dict[str, float]]
    per_category: dict[str, dict[str, float]]
    confusion: np.ndarray
    load: LoadRun
    index_seconds: float
    diversity: dict[str, dict[str, float]]


@dataclass
class PersonalisationResult:
    version: str
    weights: Weights
    own_views_weights: Weights
    default_weights: Weights
    validation: list[tuple[Weights, dict[str, float]]]
    test: dict[str, dict[str, float]]
    approaches: dict[str, dict[str, float]]
    served_agreement: float
    reasons: dict[str, float]
    experiments: dict[str, dict[str, float]]
    validation_steps: int
    test_steps: int
    shopper_config: ShopperConfig


@dataclass
class Evaluation:
    """Everything the report shows."""

    config: EvalConfig
    catalog_labels: np.ndarray
    query_indices: np.ndarray
    query_labels: np.ndarray
    versions: list[VersionResult] = field(default_factory=list)
    personalisation: list[PersonalisationResult] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


async def served_versions(triton_url: str, model_name: str) -> list[str]:
    """The versions of the model that Triton serves, oldest first."""
    client = InferenceServerClient(triton_url)
    try:
        metadata = await client.get_model_metadata(model_name)
    finally:
        await client.close()
    return sorted(metadata.versions, key=int)


async def evaluate(config: EvalConfig, settings: Settings, repository: Path) -> Evaluation:
    """Runs the whole evaluation against the Triton and Redis the settings name (see the module docstring)."""
    if not settings.triton_url:
        raise ValueError("the evaluation needs settings.triton_url")
    started = time.perf_counter()
    train, test = load_split("train"), load_split("test")
    catalog_ids = [train.product_id(index) for index in range(config.catalog_size)]
    catalog_labels = train.labels[:config.catalog_size]
    queries = stratified_queries(test, config.queries_per_category)
    query_images = [png(test.images[index]) for index in queries]
    result = Evaluation(config, catalog_labels, queries, test.labels[queries])
    versions = await served_versions(settings.triton_url, settings.model_name)
    log.info("Triton serves %s versions %s", settings.model_name, ", ".join(versions))
    index_seconds = {}
    for version in versions:
        index_started = time.perf_counter()
        await build_collection(settings, version, sources.fashion_mnist("train", limit=config.catalog_size),
                               settings.ingest_batch_size)
        index_seconds[version] = time.perf_counter() - index_started
    result.seconds["catalog embedding"] = sum(index_seconds.values())
    components = Components(settings)
    aliases = components.catalog_aliases()
    await aliases.point(settings.collection, versioned_collection(settings.collection, versions[0]))
    try:
        async with in_process(settings, grace_s=1) as running, \
                follow_alias(running.gateway.serving, components, poll_s=0.5), \
                grpc.aio.insecure_channel(running.target) as channel:
            stub = pb_grpc.RecommenderStub(channel)
            for version in versions:
                load_users = await prepare_load_users(stub, catalog_ids)
                await aliases.point(settings.collection, versioned_collection(settings.collection, version))
                model = await wait_for_model(stub, query_images[0], version)
                log.info("measuring %s", model)
                version_started = time.perf_counter()
                result.versions.append(await measure_version(
                    config, running, stub, version, model, repository / settings.model_name, query_images,
                    result.query_labels, catalog_ids, catalog_labels, train.images, load_users,
                    index_seconds[version]))
                result.seconds[f"retrieval and load, version {version}"] = time.perf_counter() - version_started
                personalisation_started = time.perf_counter()
                result.personalisation.append(await measure_personalisation(
                    config, running, version, catalog_ids, train.images, catalog_labels))
                result.seconds[f"personalisation, version {version}"] = time.perf_counter() - personalisation_started
    finally:
        await aliases.close()
    result.seconds["total"] = time.perf_counter() - started
    return result


async def prepare_load_users(stub: pb_grpc.RecommenderStub, catalog_ids: list[str]) -> list[str]:
    """Users with a few recorded views, so the load run exercises the history stage."""
    users = [f"load-{number}" for number in range(LOAD_USERS)]
    for number, user in enumerate(users):
        await stub.ForgetUser(pb.ForgetUserRequest(user_id=user), timeout=10)
        for view in range(LOAD_USER_VIEWS):
            product_id = catalog_ids[(number * LOAD_USER_VIEWS + view) % len(catalog_ids)]
            await stub.RecordView(pb.RecordViewRequest(user_id=user, product_id=product_id), timeout=10)
    return users


async def measure_version(config: EvalConfig, running: RunningGateway, stub: pb_grpc.RecommenderStub,
                          version: str, model: str, model_dir: Path, query_images: list[bytes],
                          query_labels: np.ndarray, catalog_ids: list[str], catalog_labels: np.ndarray,
                          catalog_pixels: np.ndarray, load_users: list[str], index_seconds: float) -> VersionResult:
    """Retrieval through the gateway (now serving ``version``), its in-process cross-check and a load run."""
    k = max(config.ks)
    served = await served_results(stub, query_images, k)
    vectors = await stored_vectors(running.gateway.pipeline.catalog, catalog_ids)
    sample = np.random.default_rng(config.seed).choice(len(catalog_ids), config.catalog_check, replace=False)
    in_process = await asyncio.to_thread(in_process_results, str(model_dir / version / "model.pt"), query_images,
                                         catalog_ids, vectors, catalog_pixels, sample, k)
    label_of = dict(zip(catalog_ids, catalog_labels, strict=True))
    in_catalog = np.bincount(catalog_labels, minlength=len(CLASS_NAMES))[query_labels]

    def relevant(ids: list[list[str]]) -> np.ndarray:
        return measures.relevance(query_labels, np.array([[label_of[i] for i in row] for row in ids]))

    served_relevant = relevant(served.ids)
    result_labels = np.array([[label_of[i] for i in row] for row in served.ids])
    diversity = await measure_diversity(stub, query_images, query_labels, catalog_ids, catalog_labels, vectors)
    load = await load_run(stub, running.metrics.registry, query_images, load_users, config.load_seconds,
                          config.load_concurrency)
    return VersionResult(
        version, model, served, in_process,
        measures.metrics_at(served_relevant, in_catalog, config.ks),
        measures.metrics_at(relevant(in_process.ids), in_catalog, config.ks),
        measures.per_category(query_labels, served_relevant, in_catalog, 10, CLASS_NAMES),
        measures.confusion(query_labels, result_labels, 10, len(CLASS_NAMES)), load, index_seconds, diversity)


async def measure_personalisation(config: EvalConfig, running: RunningGateway, version: str, catalog_ids: list[str],
                                  catalog_pixels: np.ndarray, catalog_labels: np.ndarray) -> PersonalisationResult:
    """Tunes the ranker on validation shoppers, then serves the test shoppers with the chosen weights.

    Redis starts empty but for the crowd's views, so no version sees views recorded for another.
    """
    shopper_config = ShopperConfig()
    catalog = Catalog(catalog_pixels[:len(catalog_ids)], catalog_labels, shopper_config, config.seed)
    categories = [CLASS_NAMES[label] for label in catalog_labels]
    crowd = simulate(catalog, config.popularity_shoppers, config.seed + 1)
    popularity = Popularity(crowd, catalog_ids, categories)
    settings, pipeline = running.settings, running.gateway.pipeline
    if settings.redis_url is None:
        raise ValueError("measuring personalisation needs settings.redis_url")
    async with Redis.from_url(settings.redis_url) as redis:
        await redis.flushdb()
    await record_crowd(pipeline.history, crowd, catalog_ids)
    validation = one_user_per_step(steps_of(simulate(catalog, config.validation_shoppers, config.seed + 2),
                                            catalog_ids, f"v{version}-validation", last=config.test_steps))
    tuning = await tune_weights(pipeline, settings.weights, validation)
    log.info("ranker weights chosen on %d validation steps: %s", len(validation), tuning.weights)
    test = steps_of(simulate(catalog, config.test_shoppers, config.seed + 3), catalog_ids, f"v{version}-test",
                    last=config.test_steps)
    experiments = Experiments([Arm(arm, BUCKETS // len(ARMS), weights)
                               for arm, weights in zip(ARMS, (tuning.weights, tuning.own_views_weights), strict=True)],
                              salt=f"v{version}")
    counted = experiment_counts(running, experiments)
    async with gateway_with_experiments(running, experiments) as stub:
        served = await served_lists(stub, pipeline, test, popularity)
    by_arm = arm_scores(served.lists, test, experiments)
    for arm, count in experiment_counts(running, experiments).items():
        by_arm[arm] |= {name: value - counted[arm][name] for name, value in count.items()}
    scores = scores_of(served.lists, test)
    for method in METHODS:
        log.info("version %s, %s: hit@10 %.3f, NDCG@10 %.3f", version, method, scores[method]["hit"],
                 scores[method]["ndcg"])
    offline = {"history_aware": [ranked_ids(inputs, tuning.weights) for inputs in served.inputs],
               "own_views_only": [ranked_ids(inputs, tuning.own_views_weights) for inputs in served.inputs]}
    agreement = sum(offline[method][i] == served.lists[method][i] for method in offline for i in range(len(test)))
    approaches = scores_of(approach_lists(served.inputs, served.query_only_inputs, tuning.own_views_weights), test)
    return PersonalisationResult(version, tuning.weights, tuning.own_views_weights, settings.weights, tuning.scores,
                                 scores, approaches, agreement / (2 * len(test)),
                                 reason_shares(served.inputs, tuning.weights), by_arm, len(validation), len(test),
                                 shopper_config)


def experiment_counts(running: RunningGateway, experiments: Experiments) -> dict[str, dict[str, float]]:
    """Per arm, the lists served and the views recorded so far, as the gateway's metrics count them."""
    return {arm.name: {"lists": running.sample("recsys_recommendations_total", {"experiment": arm.name}),
                       "views": running.sample("recsys_feedback_total", {"experiment": arm.name, "kind": "view"})}
            for arm in experiments.arms}


@asynccontextmanager
async def gateway_with_experiments(running: RunningGateway, experiments: Experiments
                                   ) -> AsyncIterator[pb_grpc.RecommenderStub]:
    """A stub of a second gateway over the same backends running the experiment arms of ``experiments``."""
    gateway = running.gateway
    async with over(Serving(gateway.pipeline.with_experiments(experiments), gateway.indexer), running.settings,
                    running.metrics, grace_s=1) as experimenting, \
            grpc.aio.insecure_channel(experimenting.target) as channel:
        yield pb_grpc.RecommenderStub(channel)
