"""B8: the model zoo (tests/zoo.py), read as a new user's models would be.

Per family, at base width 32 / depth 2 against a target of width 128 / depth 4 (muP, AdamW): the number of
tensors, the roles found (and how many came from the traced forward pass, a module's type, or a guess), the tied
tensors and how their readout multiplier is applied, the attention adapter, the forward factors absorbed; then
the coordinate check of the logits (the slope of the update of the logits against width, and of their scale at
init) under muP and under SP at widths 32, 64, 128 (1 seed, the zoo tests' settings), with both verdicts. Last,
the wall time of the zoo's default test run (``pytest tests/test_zoo.py tests/test_zoo_build.py``), measured
here in a subprocess unless ``--no-tests``.

    python bench/model_zoo.py --write
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo  # noqa: E402
from _common import ROOT, emit, provenance  # noqa: E402

import proxytune as pt  # noqa: E402
from proxytune.diagnose import coord_check  # noqa: E402
from proxytune.diagnose.spectral import loglog_slope  # noqa: E402
from proxytune.modelspec import ModelSpec  # noqa: E402

warnings.filterwarnings("ignore")


def spec(family: str) -> ModelSpec:
    zm = zoo.FAMILIES[family]
    return ModelSpec(builder=f"{ROOT / 'tests' / 'zoo.py'}:build_{family}",
                     targets_arg="targets" if family == "nanogpt" else None,
                     input="image" if zm.input == "image" else "auto")


def plan_row(family: str) -> dict:
    zm = zoo.FAMILIES[family]
    torch.manual_seed(0)
    base = zm.builder(32, 2, vocab=128, seq_len=16)
    with torch.device("meta"):
        target = zm.builder(128, 4, vocab=128, seq_len=16)
    t = time.perf_counter()
    plan = pt.parameterize(target, base, recipe="mup", seq_len=16, **spec(family).structure().plan_kwargs())
    seconds = time.perf_counter() - t
    roles = Counter(tp.role for tp in plan.tensors.values())
    sources = Counter(tp.role_source for tp in plan.tensors.values())
    tied = [f"{n} ({'input multiplier on ' + tp.readout_use if tp.readout_use else 'carried, lookup x' + format(tp.lookup_multiplier, '.3g')})"
            for n, tp in plan.tensors.items() if tp.readout_use or tp.lookup_module]
    absorbed = [n.split(": x")[0].replace("the model's forward multiplies ", "") for n in plan.notes if "(absorbed)" in n]
    return {"family": family, "tensors": len(plan.tensors),
            "roles": ", ".join(f"{r} {roles[r]}" for r in ("embedding", "hidden", "readout", "vector", "scalar")
                               if roles[r]),
            "sources": ", ".join(f"{s} {c}" for s, c in sources.most_common()),
            "branches": sum(1 for tp in plan.tensors.values() if tp.branch_output and len(tp.shape) >= 2),
            "adapter": ", ".join(sorted({r["adapter"] for r in plan.attention})) or "-",
            "tied": "; ".join(tied) or "-", "absorbed": "; ".join(absorbed) or "-", "plan_s": seconds}


def logit_slopes(family: str, recipe: str) -> tuple[float, float, bool]:
    cc = coord_check(spec(family), widths=[32, 64, 128], depth=2, recipe=recipe, seq_len=16, batch_size=4, seeds=1)
    row = cc.last_step_slopes()["logits"]
    init = [sum(r["rms_out"] for r in cc.records if r["module"] == "logits" and r["size"] == s and r["step"] == 0)
            for s in cc.sizes]
    return row["slope_delta"], loglog_slope(cc.sizes, init), cc.passed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    ap.add_argument("--no-tests", action="store_true", help="skip timing the zoo's default test run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = []
    for family in zoo.FAMILIES:
        row = plan_row(family)
        row["mup"], row["mup_init"], row["mup_pass"] = logit_slopes(family, "mup")
        row["sp"], row["sp_init"], row["sp_pass"] = logit_slopes(family, "sp")
        rows.append(row)
        print(family, row, flush=True)
    bench_s = time.perf_counter() - start
    test_line = ""
    if not args.no_tests:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:warnings", "tests/test_zoo.py",
                               "tests/test_zoo_build.py"], cwd=ROOT, capture_output=True, text=True)
        tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-200:]
        test_line = (f"The zoo's default test run (`python -m pytest tests/test_zoo.py tests/test_zoo_build.py`, "
                     f"the tune of every family but three under `-m slow`): {time.perf_counter() - t:.0f} s, "
                     f"`{tail}`.")
    lines = [provenance("model_zoo.py", "cpu", 1) + f" This table: {bench_s:.0f} s.", "",
             "Plan: base width 32 x depth 2, target 128 x 4, muP + AdamW, no overrides (nanoGPT: `targets_arg: "
             "targets`; ViT: `input: image`). Roles: the count per role; sources: where each role came from "
             "(forward = the traced forward pass showed the tensor's use, module = the owning module's type, "
             "guess = from the shape). Logit slopes: the coordinate check at widths 32, 64, 128 (3 Adam steps at "
             "lr 1e-3, 1 seed, batch 4 x 16 tokens): the update of the logits per doubling of width, and their scale "
             "at init (muP means -0.50, SP 0.00); PASS/FAIL is the whole check's verdict.", "",
             "| family | tensors | roles | role sources | branch outputs | attention adapter | tied readout | "
             "forward factors absorbed | logits muP: update / init | verdict | logits SP: update / init | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['tensors']} | {r['roles']} | {r['sources']} | {r['branches']} | "
                     f"{r['adapter']} | {r['tied']} | {r['absorbed']} | {r['mup']:+.2f} / {r['mup_init']:+.2f} | "
                     f"{'PASS' if r['mup_pass'] else 'FAIL'} | {r['sp']:+.2f} / {r['sp_init']:+.2f} | "
                     f"{'PASS' if r['sp_pass'] else 'FAIL'} |")
    right = sum(r["mup_pass"] and not r["sp_pass"] for r in rows)
    lines += ["", f"Verdicts right (muP PASS and SP FAIL): {right} of {len(rows)} families."]
    if test_line:
        lines += ["", test_line]
    emit(lines, "B8. Model zoo (CPU)", args.write)


if __name__ == "__main__":
    main()
