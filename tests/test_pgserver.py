"""A real PostgreSQL server on loopback backs Optuna's RDBStorage for many processes."""

import subprocess
import sys

import pytest

optuna = pytest.importorskip("optuna")

WORKER = """
import sys
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=sys.argv[1], storage=sys.argv[2])
study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=5)
"""


def test_pgserver_module_importable_from_tests():
    import pgserver

    assert callable(pgserver.start_postgres)


def test_rdb_storage_two_worker_processes(postgres_url):
    assert postgres_url.startswith("postgresql+psycopg2://")
    storage = optuna.storages.RDBStorage(postgres_url)
    try:
        study = optuna.create_study(study_name="two-workers", storage=storage, direction="minimize")
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, study.study_name, postgres_url],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        for w in workers:
            out, _ = w.communicate(timeout=120)
            assert w.returncode == 0, out
        trials = optuna.load_study(study_name="two-workers", storage=storage).get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(trials) == 10 and len(complete) == 10
        assert len({t.number for t in complete}) == 10
        assert all(0 <= t.params["x"] <= 1 for t in complete)
    finally:
        storage.engine.dispose()
