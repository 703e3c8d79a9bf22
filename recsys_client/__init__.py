"""A small typed async Python client of the recommendation gateway (recsys.v1).

    async with RecsysClient("localhost:50051", token="...", root_certificates=ca_pem) as client:
        response = await client.recommend(image=photo_bytes, user_id="shopper-1", limit=5)

Responses are the generated messages of `recsys_api.v1.recsys_pb2` (typed by their .pyi stubs).
"""

from recsys_client.client import IDEMPOTENT_METHODS, RecsysClient, service_config

__all__ = ["IDEMPOTENT_METHODS", "RecsysClient", "service_config"]
