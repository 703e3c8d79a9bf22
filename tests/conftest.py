"""Shared fixtures: real tritonserver and redis-server, started on free ports and stopped at the end."""

from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.triton_fixtures", "tests.redis_fixtures"]


@pytest.fixture(scope="module")
def two_torch_threads() -> Iterator[None]:
    """Runs in-process torch on two threads, as the serving model does, and restores the setting after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)
