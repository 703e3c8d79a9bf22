"""recsys.v1: `recsys_pb2` (messages) and `recsys_pb2_grpc` (service stubs and servicers)."""
