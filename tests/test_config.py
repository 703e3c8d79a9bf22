"""Configuration is read from the environment once, with documented defaults."""

from pathlib import Path

import pytest

from gateway.config import Settings


def test_an_empty_environment_selects_the_embedded_defaults():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert (settings.triton_url, settings.qdrant_url, settings.redis_url) == (None, None, None)
    assert settings.grpc_address == "[::]:50051" and settings.metrics_port == 9464


def test_variables_override_the_defaults():
    settings = Settings.from_env({
        "GRPC_ADDRESS": "127.0.0.1:6000", "METRICS_PORT": "9999", "TRITON_URL": "triton:8001",
        "QDRANT_URL": "http://qdrant:6333", "REDIS_URL": "redis://redis:6379/0", "DATA_DIR": "/var/lib/recsys",
        "HISTORY_MAX_VIEWS": "20", "RANK_WEIGHT_HISTORY": "0.8", "RANK_WEIGHT_POPULARITY": "0",
        "RANK_EXCLUDE_VIEWED": "false",
        "EMBED_TIMEOUT_SECONDS": "4", "SEARCH_TIMEOUT_SECONDS": "2", "HISTORY_TIMEOUT_SECONDS": "0.5",
    })
    assert settings.grpc_address == "127.0.0.1:6000" and settings.metrics_port == 9999
    assert settings.triton_url == "triton:8001" and settings.qdrant_url == "http://qdrant:6333"
    assert settings.redis_url == "redis://redis:6379/0" and settings.data_dir == Path("/var/lib/recsys")
    assert settings.history_max_views == 20
    assert (settings.embed_timeout_s, settings.search_timeout_s, settings.history_timeout_s) == (4, 2, 0.5)
    assert settings.weights.history == 0.8 and settings.weights.exclude_viewed is False
    assert settings.weights.popularity == 0.0


@pytest.mark.parametrize("name, value", [("METRICS_PORT", "abc"), ("RANK_WEIGHT_VISUAL", "-1"),
                                         ("RANK_WEIGHT_POPULARITY", "nan")])
def test_bad_values_fail_at_start_up(name, value):
    with pytest.raises(ValueError):
        Settings.from_env({name: value})
