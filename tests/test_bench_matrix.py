"""`bench/matrix_transfer.py` (issue 31, item 4) cannot rot: its `--smoke` mode trains every matrix optimizer's row
at tiny sizes (seconds) through the same sweep and table code as the real run, and never writes BENCHMARKS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_makes_a_row_per_optimizer(tmp_path):
    pytest.importorskip("pytorch_optimizer")
    bench_md = (ROOT / "BENCHMARKS.md").read_text()
    proc = subprocess.run([sys.executable, "bench/matrix_transfer.py", "--smoke", "--runs", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["muon", "dion", "soap", "shampoo"]
    for row in rows[1:]:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert "16:" in cells[1] and "32:" in cells[1]  # an optimum at both widths
        assert float(cells[4]) > 0 and float(cells[5]) > 0  # finite losses, transferred and best
    assert (ROOT / "BENCHMARKS.md").read_text() == bench_md
