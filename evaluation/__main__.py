"""Command line: python -m evaluation [--quick] [--out reports]; see evaluation/run.py for what it measures."""

import argparse
import asyncio
import hashlib
import logging
import tempfile
import time
from pathlib import Path

from catalog_sources.fashion_mnist import load_split
from evaluation.plots import all_figures
from evaluation.report import write_report
from evaluation.run import QUICK, EvalConfig, evaluate
from gateway.config import Settings
from stack.redis import RedisServer
from stack.triton import TritonServer

log = logging.getLogger("evaluation")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--name", default="product_embedder", help="Triton model name")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="where the report is written")
    parser.add_argument("--work-dir", type=Path, default=Path("build/eval"),
                        help="catalog collections, kept per set of model files so a rerun skips the embedding")
    parser.add_argument("--quick", action="store_true", help="a tiny catalog and few queries, for tests")
    return parser.parse_args(argv)


def data_dir(work_dir: Path, model_dir: Path, config: EvalConfig) -> Path:
    """A folder named after the model files and the catalog size: collections in it are never stale."""
    digest = hashlib.sha256(str(config.catalog_size).encode())
    for model in sorted(model_dir.glob("[0-9]*/model.pt")):
        digest.update(model.parent.name.encode() + hashlib.sha256(model.read_bytes()).digest())
    return work_dir / digest.hexdigest()[:16]


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = QUICK if args.quick else EvalConfig()
    started = time.perf_counter()
    with TritonServer(args.repository) as triton, tempfile.TemporaryDirectory(prefix="eval-redis-") as redis_dir, \
            RedisServer(Path(redis_dir)) as redis:
        settings = Settings(triton_url=triton.grpc_url, redis_url=redis.url, model_name=args.name,
                            data_dir=data_dir(args.work_dir, args.repository / args.name, config))
        evaluation = asyncio.run(evaluate(config, settings, args.repository))
    args.out.mkdir(parents=True, exist_ok=True)
    all_figures(evaluation, load_split("test").images, load_split("train").images, args.out)
    evaluation.seconds["total, with servers and figures"] = time.perf_counter() - started
    report = write_report(evaluation, args.repository / args.name, args.out)
    log.info("report: %s", report)
    return report


if __name__ == "__main__":
    main()
