"""`make demo`: sends a Fashion-MNIST test image to a running gateway through recsys_client, prints the list."""

import argparse
import asyncio

from catalog_sources.fashion_mnist import load_split
from gateway.images import encode_png
from recsys_client import RecsysClient


async def demo(target: str, index: int, user: str, limit: int, token: str) -> None:
    test = load_split("test")
    async with RecsysClient(target, token=token) as client:
        response = await client.recommend(image=encode_png(test.images[index]), user_id=user, limit=limit)
    print(f"query: {test.product_id(index)} ({test.category(index)}), model {response.model}")
    if response.degraded:
        print(f"degraded: {', '.join(response.degraded)}")
    print(f"{'product':<22} {'category':<12} {'score':>7} {'visual':>7} {'history':>7}")
    for item in response.items:
        print(f"{item.product_id:<22} {item.category:<12} {item.score:7.3f} {item.visual_score:7.3f} "
              f"{item.history_score:7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="localhost:50051", help="gateway address")
    parser.add_argument("--index", type=int, default=0, help="which Fashion-MNIST test image to send")
    parser.add_argument("--user", default="", help="user id whose history personalises the list")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--token", default="", help="bearer token, for a gateway that requires one")
    args = parser.parse_args()
    asyncio.run(demo(args.target, args.index, args.user, args.limit, args.token))


if __name__ == "__main__":
    main()
