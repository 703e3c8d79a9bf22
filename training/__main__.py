"""Command line: python -m training [--quick] [--version 2] [--force]; see training/finetune.py for the recipe."""

import argparse
import logging
from pathlib import Path

from training.card import export_version
from training.finetune import QUICK, FinetuneConfig, finetune

REPOSITORY = Path("model_repository")
QUICK_REPOSITORY = Path("build/quick/model_repository")  # a quick model never replaces a served version


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Fine-tune the ImageNet embedder on the Fashion-MNIST train split and export it as a new "
                    "model version with its training card.")
    parser.add_argument("--repository", type=Path,
                        help=f"Triton model repository (default: {REPOSITORY}, with --quick {QUICK_REPOSITORY})")
    parser.add_argument("--name", default="product_embedder", help="Triton model name")
    parser.add_argument("--version", type=int, default=2, help="model version to export (default 2)")
    parser.add_argument("--force", action="store_true", help="replace the version if it exists")
    parser.add_argument("--quick", action="store_true",
                        help=f"a tiny run ({QUICK.train_per_class} images per category, {QUICK.epochs} epochs) "
                             "that checks the whole path in about a minute")
    parser.add_argument("--cache-dir", type=Path, default=Path("build/finetune"),
                        help="where frozen features are kept between runs (default build/finetune)")
    parser.add_argument("--no-cache", action="store_true", help="keep no frozen features between runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = finetune(QUICK if args.quick else FinetuneConfig(), None if args.no_cache else args.cache_dir)
    try:
        repository = args.repository or (QUICK_REPOSITORY if args.quick else REPOSITORY)
        export_version(result, repository, args.name, args.version, args.force)
    except FileExistsError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
