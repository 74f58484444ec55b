import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Fixed seed per test and few threads, so tests are reproducible and share 2 cores well."""
    torch.manual_seed(0)
    yield
