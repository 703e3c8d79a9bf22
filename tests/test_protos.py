"""The generated stubs match the contract in protos/ and import as a package."""

import subprocess
import sys

from gateway.api.recsys.v1 import recsys_pb2, recsys_pb2_grpc


def test_generated_stubs_do_not_drift_from_the_proto():
    result = subprocess.run([sys.executable, "-m", "stack.protos", "--out", "gateway/api", "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_contract_names_that_clients_rely_on():
    services = recsys_pb2.DESCRIPTOR.services_by_name
    assert set(services["Recommender"].methods_by_name) == {"Recommend", "RecordView", "GetHistory", "ForgetUser"}
    assert set(services["Catalog"].methods_by_name) == {"UpsertProducts", "DeleteProducts", "GetProductImage"}
    assert services["Catalog"].methods_by_name["UpsertProducts"].client_streaming
    query = recsys_pb2.RecommendRequest.DESCRIPTOR.oneofs_by_name["query"]
    assert {field.name for field in query.fields} == {"image", "product_id"}
    assert {"product_id", "category", "score", "visual_score", "history_score", "attributes"} <= set(
        recsys_pb2.Recommendation.DESCRIPTOR.fields_by_name)
    assert recsys_pb2_grpc.RecommenderStub and recsys_pb2_grpc.CatalogStub
