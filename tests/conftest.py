import importlib.util

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
