"""Shared fixtures: real tritonserver and redis-server, started on free ports and stopped at the end."""

from collections.abc import Iterator

import pytest

from gateway.config import Settings, variable_of

pytest_plugins = ["tests.triton_fixtures", "tests.redis_fixtures"]
# The local stack's and the web page's own variables (stack.run.StackSettings, webui.WebUISettings).
DEV_STACK_VARIABLES = ("DEMO_CATALOG_SIZE", "WEBUI_HOST", "WEBUI_PORT", "WEBUI_TOKEN")


@pytest.fixture(autouse=True, scope="session")
def settings_from_defaults() -> Iterator[None]:
    """Settings read the environment: the suite starts from the defaults, whatever the shell exports."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [*map(variable_of, Settings.model_fields), *DEV_STACK_VARIABLES]:
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="module")
def two_torch_threads() -> Iterator[None]:
    """Runs in-process torch on two threads, as the serving model does, and restores the setting after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)
