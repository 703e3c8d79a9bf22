"""The committed stubs match the contract in protos/, the contract passes buf lint, and the stubs import as a
package."""

import subprocess
import sys
from pathlib import Path

from ranker import ReasonKind
from recsys_api.v1 import recsys_pb2, recsys_pb2_grpc
from tools.protos import generate, lint, stale_stubs

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_stubs_do_not_drift_from_the_proto(tmp_path: Path):
    assert stale_stubs(ROOT / "recsys_api") == []
    stale = tmp_path / "stale"
    generate(stale)
    (stale / "v1" / "recsys_pb2.py").write_text("# edited by hand\n")
    assert stale_stubs(stale) == [Path("v1") / "recsys_pb2.py"]


def test_make_check_protos_runs_the_comparison_and_buf_lint():
    result = subprocess.run([sys.executable, "-m", "tools.protos", "--check"], cwd=ROOT, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "buf lint is clean" in result.stdout
    assert lint() == ""


def test_buf_lint_finds_what_breaks_its_rules(tmp_path: Path):
    """The linter really runs: a copy of the proto without one field comment fails buf's COMMENT_FIELD rule."""
    proto = (ROOT / "protos" / "recsys" / "v1" / "recsys.proto").read_text()
    comment = "  // Unix time of the view in milliseconds, by the server's clock when it recorded the view.\n"
    uncommented = proto.replace(comment, "", 1)
    assert uncommented != proto
    (tmp_path / "recsys" / "v1").mkdir(parents=True)
    (tmp_path / "recsys" / "v1" / "recsys.proto").write_text(uncommented)
    (tmp_path / "buf.yaml").write_text((ROOT / "protos" / "buf.yaml").read_text())
    assert "Field \"viewed_at_ms\" should have a non-empty comment" in lint(tmp_path)


def test_the_proto_names_its_packages_for_other_languages():
    options = recsys_pb2.DESCRIPTOR.GetOptions()
    assert options.go_package and options.java_package and options.java_multiple_files
    assert options.csharp_namespace and options.php_namespace and options.ruby_package


def test_contract_names_that_clients_rely_on():
    services = recsys_pb2.DESCRIPTOR.services_by_name
    assert set(services["Recommender"].methods_by_name) == {"Recommend", "RecordView", "RecordFeedback", "GetHistory",
                                                            "ForgetUser"}
    assert set(services["Catalog"].methods_by_name) == {"UpsertProducts", "DeleteProducts", "GetProductImage"}
    assert services["Catalog"].methods_by_name["UpsertProducts"].client_streaming
    query = recsys_pb2.RecommendRequest.DESCRIPTOR.oneofs_by_name["query"]
    assert {field.name for field in query.fields} == {"image", "product_id"}
    assert {"product_id", "category", "score", "visual_score", "history_score", "attributes", "reasons"} <= set(
        recsys_pb2.Recommendation.DESCRIPTOR.fields_by_name)
    assert {f"REASON_KIND_{kind.name}" for kind in ReasonKind} <= set(recsys_pb2.ReasonKind.keys())
    assert callable(recsys_pb2_grpc.RecommenderStub) and callable(recsys_pb2_grpc.CatalogStub)
