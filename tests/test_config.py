"""Configuration is read from the environment once, by pydantic-settings, with documented defaults and clear errors."""

from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import Settings, SettingsError


def test_an_empty_environment_selects_the_embedded_defaults():
    settings = Settings.from_env()
    assert settings == Settings()
    assert (settings.triton_url, settings.qdrant_url, settings.redis_url) == (None, None, None)
    assert settings.grpc_address == "[::]:50051" and settings.metrics_port == 9464


def test_variables_override_the_defaults(monkeypatch: pytest.MonkeyPatch):
    for name, value in {
        "GRPC_ADDRESS": "127.0.0.1:6000", "METRICS_PORT": "9999", "TRITON_URL": "triton:8001",
        "QDRANT_URL": "http://qdrant:6333", "REDIS_URL": "redis://redis:6379/0", "DATA_DIR": "/var/lib/recsys",
        "QDRANT_COLLECTION": "catalog", "HISTORY_MAX_VIEWS": "20", "HISTORY_TTL_SECONDS": "60",
        "RANK_WEIGHT_HISTORY": "0.8", "RANK_WEIGHT_POPULARITY": "0", "RANK_EXCLUDE_VIEWED": "false",
        "EMBED_TIMEOUT_SECONDS": "4", "SEARCH_TIMEOUT_SECONDS": "2", "HISTORY_TIMEOUT_SECONDS": "0.5",
        "IMAGE_MAX_BYTES": "1024", "LOG_LEVEL": "debug", "MAX_CONCURRENT_IMAGES": "",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert settings.grpc_address == "127.0.0.1:6000" and settings.metrics_port == 9999
    assert settings.triton_url == "triton:8001" and settings.qdrant_url == "http://qdrant:6333"
    assert settings.redis_url == "redis://redis:6379/0" and settings.data_dir == Path("/var/lib/recsys")
    assert settings.collection == "catalog"
    assert (settings.history_max_views, settings.history_ttl_s) == (20, 60)
    assert (settings.embed_timeout_s, settings.search_timeout_s, settings.history_timeout_s) == (4, 2, 0.5)
    assert settings.weights.history == 0.8 and settings.weights.exclude_viewed is False
    assert settings.weights.popularity == 0.0
    assert settings.image_limits.max_bytes == 1024 and settings.log_level == "DEBUG"
    assert settings.max_concurrent_images == Settings().max_concurrent_images, "an empty variable keeps the default"


@pytest.mark.parametrize("value, expected", [("true", True), ("1", True), ("YES", True), ("on", True),
                                             ("false", False), ("0", False), ("No", False), ("off", False)])
def test_booleans_take_the_usual_spellings(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool):
    monkeypatch.setenv("RANK_EXCLUDE_VIEWED", value)
    assert Settings.from_env().weights.exclude_viewed is expected


@pytest.mark.parametrize("name, value, expected", [
    ("METRICS_PORT", "9464x", "METRICS_PORT='9464x': Input should be a valid integer"),
    ("METRICS_PORT", "70000", "METRICS_PORT='70000': Input should be less than or equal to 65535"),
    ("RANK_EXCLUDE_VIEWED", "yep", "RANK_EXCLUDE_VIEWED='yep': Input should be a valid boolean"),
    ("RANK_WEIGHT_VISUAL", "-1", "RANK_WEIGHT_VISUAL='-1': Input should be greater than or equal to 0"),
    ("RANK_WEIGHT_POPULARITY", "nan", "RANK_WEIGHT_POPULARITY='nan': Input should be a finite number"),
    ("RANK_HISTORY_TEMPERATURE", "0", "RANK_HISTORY_TEMPERATURE='0': Input should be greater than 0"),
    ("RANK_NEAR_DUPLICATE", "1", "RANK_NEAR_DUPLICATE='1': Input should be less than 1"),
    ("RANK_SEARCH_VIEWS", "-1", "RANK_SEARCH_VIEWS='-1': Input should be greater than or equal to 0"),
    ("REQUEST_TIMEOUT_SECONDS", "0", "REQUEST_TIMEOUT_SECONDS='0': Input should be greater than 0"),
    ("LOG_LEVEL", "loud", "LOG_LEVEL='LOUD': Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ("DEFAULT_LIMIT", "500", "DEFAULT_LIMIT (500) must not exceed MAX_LIMIT (100)"),
    ("RANK_EXPERIMENTS", "control", "RANK_EXPERIMENTS: error parsing value"),
    ("RANK_EXPERIMENTS", '{"a": {"share": 60}, "b": {"share": 30}}',
     "the shares of RANK_EXPERIMENTS add up to 90; they must add up to 100"),
    ("RANK_EXPERIMENTS", '{"a": {"share": 100, "histroy": 2}}',
     "RANK_EXPERIMENTS[a][histroy]=2: Extra inputs are not permitted"),
    ("RANK_EXPERIMENTS", '{"a": {"share": 100, "history_temperature": 0}}',
     "RANK_EXPERIMENTS[a][history_temperature]=0: Input should be greater than 0"),
    ("RANK_EXPERIMENTS", '{"a b": {"share": 100}}', "RANK_EXPERIMENTS[a b][[key]]='a b': String should match pattern"),
    ("RANK_EXPERIMENTS", '{"none": {"share": 100}}', "'none' is reserved"),
    ("IMAGE_PREPROCESSING", "gpu", "IMAGE_PREPROCESSING='gpu': Input should be 'gateway' or 'triton'"),
])
def test_a_bad_value_names_the_variable_and_what_is_expected(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                                              expected: str):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        Settings.from_env()
    assert expected in str(refused.value)
    if name == "RANK_EXCLUDE_VIEWED":
        assert "(true/false, 1/0, yes/no or on/off)" in str(refused.value)


def test_every_bad_variable_is_reported_at_once(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("METRICS_PORT", "abc")
    monkeypatch.setenv("DECODE_WORKERS", "0")
    with pytest.raises(SettingsError) as refused:
        Settings.from_env()
    assert "METRICS_PORT='abc'" in str(refused.value) and "DECODE_WORKERS='0'" in str(refused.value)


def test_experiment_arms_change_only_the_weights_they_name(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RANK_WEIGHT_HISTORY", "1.5")
    monkeypatch.setenv("RANK_EXPERIMENTS",
                       '{"control": {"share": 70}, "cool": {"share": 30, "history_temperature": 0.05}}')
    settings = Settings.from_env()
    control, cool = settings.experiments.arms
    assert (control.name, control.share, control.weights) == ("control", 70, settings.weights)
    assert (cool.name, cool.share) == ("cool", 30)
    assert cool.weights == replace(settings.weights, history_temperature=0.05) and cool.weights.history == 1.5
    monkeypatch.delenv("RANK_EXPERIMENTS")
    assert not Settings.from_env().experiments, "none by default"
