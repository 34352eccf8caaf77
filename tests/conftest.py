import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def postgres_url(postgres_server):
    """URL (``postgresql+psycopg2://postgres@127.0.0.1:PORT/proxytune_test``) of a
    throwaway PostgreSQL server started once per session; skips when unavailable."""
    return postgres_server.url


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """The throwaway PostgreSQL server itself (``.url``, ``.pause()``, ``.resume()``); skips when unavailable."""
    for module, package in (("sqlalchemy", "sqlalchemy"), ("psycopg2", "psycopg2-binary")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(
                f"PostgreSQL tests need the '{module}' module: pip install {package} "
                "(or pip install -e '.[postgres]')"
            )
    from pgserver import start_postgres

    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    if isinstance(server, str):
        pytest.skip(f"PostgreSQL server could not be started: {server}")
    try:
        yield server
    finally:
        server.stop()


BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="session")
def bench_script():
    """Import a script of ``bench/`` by name (the scripts are not a package: their folder joins sys.path for the
    session, as when one is run from there)."""
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(BENCH))
