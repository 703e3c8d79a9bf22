"""Sends a Fashion-MNIST test image to a running gateway and prints the recommendations."""

import argparse
import io

import grpc
from PIL import Image

from gateway.api.recsys.v1 import recsys_pb2 as pb
from gateway.api.recsys.v1 import recsys_pb2_grpc as pb_grpc
from gateway.fashion_mnist import load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="localhost:50051", help="gateway address")
    parser.add_argument("--index", type=int, default=0, help="which Fashion-MNIST test image to send")
    parser.add_argument("--user", default="", help="user id whose history personalises the list")
    parser.add_argument("--limit", type=int, default=10)
    args = parser.parse_args()
    test = load_split("test")
    encoded = io.BytesIO()
    Image.fromarray(test.images[args.index], mode="L").save(encoded, format="PNG")
    with grpc.insecure_channel(args.target) as channel:
        response = pb_grpc.RecommenderStub(channel).Recommend(
            pb.RecommendRequest(image=encoded.getvalue(), user_id=args.user, limit=args.limit), timeout=10)
    print(f"query: {test.product_id(args.index)} ({test.category(args.index)}), model {response.model}")
    if response.degraded:
        print(f"degraded: {', '.join(response.degraded)}")
    print(f"{'product':<22} {'category':<12} {'score':>7} {'visual':>7} {'history':>7}")
    for item in response.items:
        print(f"{item.product_id:<22} {item.category:<12} {item.score:7.3f} {item.visual_score:7.3f} "
              f"{item.history_score:7.3f}")


if __name__ == "__main__":
    main()
