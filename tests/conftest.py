import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Fixed seed per test and few threads, so tests are reproducible and share 2 cores well."""
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def engine():
    """scsam-tiny on the torch backend (CPU), loaded once per test module: the backend most runtime tests
    segment with. A module that needs another model or one torch thread defines its own `engine`."""
    from emseg_rt.runtime.loader import load_backend  # deferred: conftest loads before the tests' own imports

    backend = load_backend("scsam-tiny", "torch", "cpu")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for the module: small models run many times slower with two threads when
    the 2-core machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    """One fresh export cache per test session (model packages exported on the fly land here), unless the
    caller chose one with $EMSEG_RT_CACHE. Subprocesses (CLI tests) inherit it."""
    import os
    import tempfile

    os.environ.setdefault("EMSEG_RT_CACHE", tempfile.mkdtemp(prefix="emseg-rt-test-cache-"))
    if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test`: one worker per core, so one thread per worker
        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # and in the CLI subprocesses it starts


@pytest.fixture(scope="session")
def phantom_full_trace(tmp_path_factory):
    """The FP32 trace of the trained default model's full graph, made once per test process and shared by the
    quantised-package tests (int8, fp8, int8-wo): `write_package` copies from a trace and leaves it as it is."""
    from emseg_rt.export import trace_graphs  # deferred: conftest loads before the tests' own imports

    return trace_graphs("scsam-phantom", tmp_path_factory.mktemp("phantom-trace"), components=("full",))
