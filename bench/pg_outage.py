"""Soak: a CLI sweep on PostgreSQL while the server is stopped and restarted again and again.

Starts a throwaway PostgreSQL server (the test suite's ``tests/pgserver.py``: needs the server binaries,
``apt-get install postgresql``), runs ``proxytune sweep`` with 2 local workers against it, and while the
sweep runs stops the server (``pg_ctl stop -m fast``: every connection is cut) for a random 2 to 15 s,
``--outages`` times, with 5 to 15 s of service between. Checked at the end:

- the sweep's exit status (0: it rode out every outage, nothing to resume);
- every point complete exactly once (``lost``, ``duplicated``);
- no trial taken from a live worker (``requeued``: trials re-queued, which only a dead worker's deserve);
- the outages the processes logged (``unreachable`` / ``reachable again`` lines on stderr).

    python bench/pg_outage.py --outages 8 --out bench/results/pg_outage.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pgserver import start_postgres  # noqa: E402

from soak import SWEEP  # noqa: E402  - the same 96-point sweep as the SIGKILL soak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outages", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="proxytune-pg-outage-"))
    server = start_postgres(work / "pg")
    if isinstance(server, str):
        sys.exit(f"no PostgreSQL server: {server}")
    try:
        sweep = {**SWEEP, "storage": server.url, "runs_dir": str(work / "runs")}
        cfg = work / "sweep.yaml"
        cfg.write_text(yaml.safe_dump(sweep))
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "proxytune.cli", "sweep", str(cfg)], cwd=work,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        down_s = []
        for i in range(args.outages):
            time.sleep(rng.uniform(5, 15))
            if proc.poll() is not None:
                break
            gone = rng.uniform(2, 15)
            server.pause()
            time.sleep(gone)
            server.resume()
            down_s.append(round(gone, 1))
            print(f"outage {i + 1}/{args.outages}: server down {gone:.1f} s", flush=True)
        err = proc.communicate()[1]
        wall = time.time() - t0
        from optuna.trial import TrialState

        from proxytune.sweep import Sweep

        store = Sweep.from_dict(sweep).store()
        trials = store.trials()
        per_point = Counter(t.user_attrs["point_id"] for t in trials if t.state == TrialState.COMPLETE)
        statuses = Counter(t.user_attrs.get("status") for t in trials)
        n_points = 1
        for v in SWEEP["axes"].values():
            n_points *= len(v)
        result = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d"),
            "cpus": os.cpu_count(), "outages": len(down_s), "down_s": down_s, "points": n_points,
            "sweep_exit": proc.returncode, "complete": len(per_point), "lost": n_points - len(per_point),
            "duplicated": sum(1 for n in per_point.values() if n > 1), "requeued": statuses.get("requeued", 0),
            "failed": statuses.get("failed", 0),
            "logged_unreachable": err.count("unreachable ("), "logged_reachable_again": err.count("reachable again"),
            "wall_s": round(wall, 1),
        }
        print(json.dumps(result, indent=1))
        if proc.returncode != 0:
            print(err[-3000:], file=sys.stderr)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
