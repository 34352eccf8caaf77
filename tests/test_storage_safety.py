"""A storage file is recognised before anything writes to it, and a sweep's identity is set in one atomic step.

A: a SQLite database, a text file or an empty file given as ``storage:`` is refused in one line, untouched, no
side file beside it; no repair ever cuts a file at byte 0.
B: two different sweeps started at once under one name: exactly one is accepted, on a journal and on SQLite,
from threads, processes and the command line.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from proxytune.cli import app
from proxytune.sweep import Sweep, SweepConfigError
from proxytune.sweep.config import SweepConfig
from proxytune.sweep.journal import NotAJournal, corrupt_message, cut_journal, repair_tail
from proxytune.sweep.store import IDENTITY_ATTR, SweepStore, open_storage

PROGRAM = "def run(trial):\n    return 1.0 + abs(trial.params['lr'])\n"
NAME = "same"


def sweep_dict(folder: Path | str, which: str = "a", storage: str | None = None, name: str = NAME) -> dict:
    """A one-point sweep of a program function (no torch, runs in well under a second); ``which`` changes its
    identity."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "prog_safety.py").exists():
        (folder / "prog_safety.py").write_text(PROGRAM)
    d = {"name": name, "program": {"function": "prog_safety:run", "cwd": str(folder), "params": {"which": which}},
         "points": [{"log2_lr": -8}], "strategy": {"kind": "list"}, "executor": {"kind": "inline"},
         "runs_dir": str(folder / "runs")}
    if storage is not None:
        d["storage"] = storage
    return d


# ------------------------------------------------------------------------------------------------ A: recognise
def make_sqlite(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("create table results (id integer primary key, name text, loss real)")
    con.executemany("insert into results values (?, ?, ?)", [(i, f"run-{i}", 1 / (i + 1)) for i in range(6000)])
    con.commit()
    con.close()


def make_text(path: Path) -> None:
    path.write_text("notes on the sweep\nlr 1e-3 looked best\nthe last line has no newline")


def make_empty(path: Path) -> None:
    path.write_bytes(b"")


FOREIGN = {"sqlite": ("results.db", make_sqlite), "text": ("notes.txt", make_text),
           "empty": ("empty.journal", make_empty)}


def one_line_refusal(msg: str, path: Path, kind: str) -> None:
    assert "\n" not in msg and str(path) in msg, msg
    if kind == "sqlite":
        assert "SQLite database" in msg and f"sqlite:///{path}" in msg, msg
    else:
        assert "sqlite:///" in msg and "postgresql://" in msg, msg
        assert ("empty file" if kind == "empty" else "not a proxytune journal") in msg, msg


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_a_file_that_is_not_a_journal_is_refused_untouched(tmp_path, kind):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    filename, make = FOREIGN[kind]
    path = data_dir / filename
    make(path)
    before, listing = path.read_bytes(), sorted(os.listdir(data_dir))
    if kind != "empty":
        assert not before.endswith(b"\n")  # it would have a "torn tail" to cut, were it taken for a journal
    d = sweep_dict(tmp_path / "prog", storage=str(path))
    cfg_file = tmp_path / "sweep.yaml"
    cfg_file.write_text(yaml.safe_dump(d))

    for attempt in (lambda: Sweep.from_dict(d).check(), lambda: Sweep.from_dict(d).run(),
                    lambda: SweepStore.open(SweepConfig.from_dict(d), create=True),  # past the check
                    lambda: open_storage(str(path))):
        with pytest.raises(SweepConfigError) as exc:
            attempt()
        one_line_refusal(str(exc.value), path, kind)
    runner = CliRunner()
    for args in (["sweep", "--check", str(cfg_file)], ["sweep", str(cfg_file)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        errors = [line for line in res.output.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("error: "), res.output
        one_line_refusal(errors[0], path, kind)

    assert path.read_bytes() == before  # byte-identical
    assert sorted(os.listdir(data_dir)) == listing  # no side file (torn tail, lock) beside it
    if kind == "sqlite":
        con = sqlite3.connect(path)
        assert con.execute("select count(*), sum(id) from results").fetchone() == (6000, 6000 * 5999 // 2)
        con.close()


def test_the_repair_tools_refuse_a_file_that_is_not_a_journal(tmp_path):
    for kind, (filename, make) in FOREIGN.items():
        path = tmp_path / filename
        make(path)
        before = path.read_bytes()
        if kind != "empty":
            with pytest.raises(NotAJournal, match="not a proxytune journal|SQLite database"):
                repair_tail(str(path))
        with pytest.raises(ValueError, match="not a proxytune journal|SQLite database|empty"):
            cut_journal(str(path), before.index(b"\n") + 1 if b"\n" in before else 0)
        assert path.read_bytes() == before, kind
    assert sorted(os.listdir(tmp_path)) == sorted(name for name, _ in FOREIGN.values())


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, bytes]:
    """(the program folder, the journal bytes) of a finished one-point sweep."""
    tmp = tmp_path_factory.mktemp("done")
    assert Sweep.from_dict(sweep_dict(tmp)).run()["complete"] == 1
    return tmp, (tmp / "runs" / NAME / "trials.journal").read_bytes()


def test_no_repair_cuts_a_journal_at_byte_0(tmp_path, finished):
    _, journal = finished
    run_dir = tmp_path / "runs" / NAME
    run_dir.mkdir(parents=True)
    path = run_dir / "trials.journal"
    path.write_bytes(journal)
    (run_dir / "sweep.yaml").write_text(yaml.safe_dump(sweep_dict(tmp_path)))
    with pytest.raises(NotAJournal, match="--cut-at 0 would move the whole journal"):
        cut_journal(str(path), 0)
    res = CliRunner().invoke(app, ["repair", str(run_dir), "--cut-at", "0"])
    assert res.exit_code == 2 and "--cut-at 0 would move the whole journal" in res.output, res.output
    assert path.read_bytes() == journal and not list(run_dir.glob("*.cut-*"))

    # a journal holding only a torn first record (a first write cut short): nothing cut, the way out named
    path.write_bytes(journal[:30])
    for attempt in (lambda: repair_tail(str(path)), lambda: open_storage(str(path)),
                    lambda: Sweep.from_dict(sweep_dict(tmp_path)).check()):
        with pytest.raises((NotAJournal, SweepConfigError), match="only an incomplete first record.*delete it"):
            attempt()
    assert path.read_bytes() == journal[:30] and not list(run_dir.glob("*.torn-*"))

    # corrupt at the first record: the message offers no cut (it would keep nothing)
    assert "--cut-at" not in corrupt_message(str(path), 0, 1)
    assert "--cut-at 40" in corrupt_message(str(path), 40, 2)
    path.write_bytes(b"garbage that is not json\n" + journal)
    with pytest.raises(SweepConfigError, match="not a proxytune journal") as exc:
        open_storage(str(path))
    assert "--cut-at" not in str(exc.value)


def test_an_empty_journal_proxytune_made_is_used(tmp_path):
    # an interrupted first start leaves the sweep's own trials.journal empty
    d = sweep_dict(tmp_path)
    own = tmp_path / "runs" / NAME / "trials.journal"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"")
    Sweep.from_dict(d).check()
    assert Sweep.from_dict(d).run()["complete"] == 1
    # an explicit path: the first start makes the lock file before the journal, so an empty one beside it is ours
    path = tmp_path / "mine.journal"
    SweepStore.open(SweepConfig.from_dict(sweep_dict(tmp_path, storage=str(path), name="m")), create=True)
    assert Path(f"{path}.flock").exists()
    path.write_bytes(b"")
    d = sweep_dict(tmp_path, storage=str(path), name="m2")
    Sweep.from_dict(d).check()
    assert Sweep.from_dict(d).run()["complete"] == 1


# -------------------------------------------------------------------------------------------- B: one identity
def storage_for(kind: str, folder: Path | str) -> str | None:
    return f"sqlite:///{folder}/trials.db" if kind == "sqlite" else None


def try_open(d: dict) -> str:
    try:
        SweepStore.open(SweepConfig.from_dict(d), create=True)
        return "ok"
    except SweepConfigError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - reported as a failure of the test, with what it was
        return f"unexpected {type(exc).__name__}: {exc}"


def exactly_one_wins(results: list[str], needle: str = "different configuration", where: object = None) -> None:
    assert len(results) == 2 and results.count("ok") == 1, (where, results)
    (loser,) = [r for r in results if r != "ok"]
    assert needle in loser, (where, results)


def race_threads(dicts: list[dict]) -> list[str]:
    barrier = threading.Barrier(len(dicts))
    out: list[str] = [""] * len(dicts)

    def go(k: int) -> None:
        barrier.wait(timeout=60)
        out[k] = try_open(dicts[k])

    threads = [threading.Thread(target=go, args=(k,)) for k in range(len(dicts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_sweeps_started_at_once_under_one_name_from_threads(tmp_path, kind):
    for i in range(20):
        folder = tmp_path / str(i)
        url = storage_for(kind, folder)
        a, b = sweep_dict(folder, "a", url), sweep_dict(folder, "b", url)
        if url and i % 2:
            open_storage(url)  # a database made before: the race is on the sweep alone, not on the schema too
        exactly_one_wins(race_threads([a, b]), where=i)
        if i % 5:
            continue
        # the winner's sweep is the stored one, whoever created the study
        winner_cfg = SweepConfig.from_dict(a if try_open(a) == "ok" else b)
        store = SweepStore.open(winner_cfg, create=False)
        assert store.study.user_attrs[IDENTITY_ATTR] == winner_cfg.identity()


def test_two_sweeps_started_at_once_under_one_name_on_postgresql(tmp_path, postgres_url):
    for i in range(10):
        name = f"race-{uuid.uuid4().hex[:8]}"  # one database for the session: a new sweep name each round
        a, b = (sweep_dict(tmp_path, which, postgres_url, name=name) for which in ("a", "b"))
        exactly_one_wins(race_threads([a, b]), where=i)


def test_two_names_started_at_once_in_one_journal_file(tmp_path):
    for i in range(5):
        folder = tmp_path / str(i)
        path = str(folder / "shared.journal")
        exactly_one_wins(race_threads([sweep_dict(folder, "a", path, name="one"),
                                       sweep_dict(folder, "a", path, name="two")]), needle="belongs to sweep")


def test_a_study_without_its_identity_yet_is_claimed_once_and_waited_for(tmp_path):
    # created by a process that stopped before recording the identity: two openers, one wins
    for kind in ("journal", "sqlite"):
        for i in range(5):
            folder = tmp_path / f"{kind}{i}"
            url = storage_for(kind, folder) or str(folder / "runs" / NAME / "trials.journal")
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            storage = open_storage(url)
            storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], NAME)
            del storage
            exactly_one_wins(race_threads([sweep_dict(folder, "a", storage_for(kind, folder)),
                                           sweep_dict(folder, "b", storage_for(kind, folder))]))
    # a reader (no create) of a database sweep created a moment ago waits for its identity, then compares
    folder = tmp_path / "wait"
    url = storage_for("sqlite", folder)
    folder.mkdir()
    storage = open_storage(url)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], NAME)
    setter = threading.Timer(0.5, lambda: storage.set_study_user_attr(
        study_id, IDENTITY_ATTR, SweepConfig.from_dict(sweep_dict(folder, "a", url)).identity()))
    setter.start()
    start = time.monotonic()
    with pytest.raises(SweepConfigError, match="different configuration"):
        SweepStore.open(SweepConfig.from_dict(sweep_dict(folder, "b", url)), create=False)
    assert 0.4 < time.monotonic() - start < 4
    setter.join()


def test_a_journal_whose_lock_cannot_be_taken_is_read_but_not_written(tmp_path, monkeypatch):
    from proxytune.sweep import journal, store

    d = sweep_dict(tmp_path)
    assert Sweep.from_dict(d).run()["complete"] == 1
    path = tmp_path / "runs" / NAME / "trials.journal"
    before = path.read_bytes()

    def refuse(self):  # noqa: ANN001
        raise PermissionError(13, "Permission denied", self.path)

    monkeypatch.setattr(journal.FlockLock, "acquire", refuse)  # a read-only run folder with no lock file
    monkeypatch.setattr(store.os, "access", lambda p, mode: False)
    assert SweepStore.open(SweepConfig.from_dict(d), create=False).counts()["complete"] == 1
    with pytest.raises(SweepConfigError, match="cannot take its lock .*trials.journal.flock"):
        SweepStore.open(SweepConfig.from_dict(d), create=True)
    assert path.read_bytes() == before


def _race_in_process(base: str, which: str, n: int, barrier, queue) -> None:  # noqa: ANN001 - mp proxies
    """One side of the race, in a spawned process: n rounds on a journal, then n on SQLite."""
    for kind in ("journal", "sqlite"):
        for i in range(n):
            folder = Path(base) / f"{kind}-{i}"
            d = sweep_dict(folder, which, storage_for(kind, folder))
            if kind == "sqlite" and which == "a" and i % 2:
                open_storage(d["storage"])  # before the barrier: the race is on the sweep alone
            barrier.wait(timeout=120)
            queue.put((kind, i, try_open(d)))


def test_two_sweeps_started_at_once_under_one_name_from_processes(tmp_path):
    n = 20
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_in_process, args=(str(tmp_path), which, n, barrier, queue))
             for which in ("a", "b")]
    for p in procs:
        p.start()
    results: dict[tuple[str, int], list[str]] = {}
    try:
        for _ in range(4 * n):
            kind, i, res = queue.get(timeout=180)
            results.setdefault((kind, i), []).append(res)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert len(results) == 2 * n
    for key, res in sorted(results.items()):
        exactly_one_wins(res, where=key)


def race_cli(tmp_path: Path, rounds: int) -> None:
    """``rounds`` times, two ``proxytune sweep`` processes started together, journal and SQLite in turn."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for i in range(rounds):
        kind = ("journal", "sqlite")[i % 2]
        folder = tmp_path / f"{kind}-{i}"
        files = []
        for which in ("a", "b"):
            d = sweep_dict(folder, which, storage_for(kind, folder))
            files.append(folder / f"sweep-{which}.yaml")
            files[-1].write_text(yaml.safe_dump(d))
        procs = [subprocess.Popen([sys.executable, "-m", "proxytune.cli", "sweep", str(f)], cwd=folder, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f in files]
        outs = [(*p.communicate(timeout=180), p.returncode) for p in procs]
        assert sorted(code for _, _, code in outs) == [0, 2], (i, outs)
        (loser,) = [err for _, err, code in outs if code == 2]
        errors = [line for line in loser.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "different configuration" in errors[0] and "Traceback" not in loser, (i, loser)


def test_two_sweeps_started_at_once_from_the_command_line(tmp_path):
    race_cli(tmp_path, 5)


@pytest.mark.slow
def test_two_sweeps_started_at_once_from_the_command_line_many_times(tmp_path):
    race_cli(tmp_path, 40)  # 20 on each store


def test_importing_and_creating_a_sweep_leave_optunas_verbosity_alone(tmp_path):
    """Importing proxytune sets no global state of Optuna's; creating a study silences its INFO line only for
    that call, then restores the user's verbosity (checked in a fresh interpreter, where nothing ran before)."""
    import subprocess
    import sys

    code = (
        "import optuna, logging\n"
        "optuna.logging.set_verbosity(logging.DEBUG)\n"
        "import proxytune, proxytune.sweep, proxytune.cli, proxytune.tune\n"
        "assert optuna.logging.get_verbosity() == logging.DEBUG, 'import changed it'\n"
        "from proxytune.sweep.store import _optuna_quiet\n"
        "with _optuna_quiet():\n"
        "    assert optuna.logging.get_verbosity() == logging.WARNING\n"
        "assert optuna.logging.get_verbosity() == logging.DEBUG, 'not restored'\n"
        "print('unchanged')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "unchanged" in out.stdout, out.stderr
