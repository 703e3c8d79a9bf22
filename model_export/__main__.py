"""Command line: python -m model_export --backbone efficientnet_lite0 --name product_embedder --repository R."""

import argparse
import logging
from pathlib import Path

from model_export.embedding import BACKBONES, DEFAULT_BACKBONE, MissingWeightsError
from model_export.export import export_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m model_export",
        description="Export the TorchScript image-embedding model and its Triton config into a model repository.")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default=DEFAULT_BACKBONE)
    parser.add_argument("--name", required=True, help="Triton model name, e.g. product_embedder")
    parser.add_argument("--repository", type=Path, required=True, help="Triton model repository folder")
    parser.add_argument("--version", type=int, default=1, help="model version folder (default 1)")
    parser.add_argument("--random-weights", action="store_true",
                        help="untrained weights instead of ImageNet ones, for tests only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        export_model(args.repository, args.name, args.backbone, args.version, args.random_weights)
    except (MissingWeightsError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
