"""Search storage on PostgreSQL: a throwaway server is started when its binaries are installed.

CI: the Debian package ``postgresql`` (initdb, pg_ctl) and ``psycopg2-binary`` (pip); the
test skips with the reason otherwise. It runs the server as the ``postgres`` user when the
tests run as root (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest

from tuneforge.config import SearchConfig
from tuneforge.plugin_manager import PluginManager
from tuneforge.search import Objective, SearchSpace
from tuneforge.search.storage import fail_stale_trials, open_storage, retried_numbers

pytestmark = pytest.mark.slow


def _find(binary: str) -> str | None:
    found = shutil.which(binary)
    if found:
        return found
    for version in ("17", "16", "15", "14", "13"):
        path = Path(f"/usr/lib/postgresql/{version}/bin/{binary}")
        if path.is_file():
            return str(path)
    return None


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = _find("initdb"), _find("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL server binaries (initdb/pg_ctl); apt-get install postgresql")
    pytest.importorskip("psycopg2", reason="pip install psycopg2-binary")
    as_user: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        as_user = ["runuser", "-u", "postgres", "--"]
    # not under pytest's tmp dir: that is private to root, and the server runs as 'postgres'
    base = Path(tempfile_dir := tempfile.mkdtemp(prefix="tuneforge-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if as_user:
        os.chown(base, pw.pw_uid, pw.pw_gid)
        os.chown(sock, pw.pw_uid, pw.pw_gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True, cwd=tempfile_dir)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"],
                   check=True, capture_output=True, cwd=tempfile_dir)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                       cwd=tempfile_dir)
        shutil.rmtree(base, ignore_errors=True)


def test_parallel_workers_share_a_postgres_study(postgres_url):
    strategies = PluginManager.default().build_registries().search_strategies
    space = SearchSpace.from_config(SearchConfig.model_validate({"params": {
        "training.lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}}}))
    cls = strategies.get("tpe")
    strategy = cls(cls.parse_options({"n_startup_trials": 3}, "tpe"), space,
                   [Objective("validation.loss", "minimize")], seed=0)
    storage = open_storage(postgres_url, heartbeat_seconds=1, max_retries=1)
    study = optuna.create_study(storage=storage, study_name="pg-workers", sampler=strategy.sampler())
    lock = threading.Lock()

    def worker():
        for _ in range(4):
            with lock:
                trial = study.ask()
                lr = space.sample(trial, {})["training.lr"]
            time.sleep(0.05)
            study.tell(trial, (lr - 1e-3) ** 2)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # another "machine" opens the same study through its own storage object
    other = optuna.load_study(study_name="pg-workers", storage=open_storage(postgres_url, None))
    assert len(other.trials) == 8 and all(t.state.name == "COMPLETE" for t in other.trials)
    assert len({t.number for t in other.trials}) == 8


def test_stale_trial_on_postgres_is_failed_and_retried(postgres_url):
    storage = open_storage(postgres_url, heartbeat_seconds=1, max_retries=1)
    study = optuna.create_study(storage=storage, study_name="pg-stale")
    trial = study.ask({"training.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)})
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.6)
    fail_stale_trials(study)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert retried_numbers(trials) == {0} and trials[1].params == trials[0].params
