"""A parameterized model under torch.compile, DDP and FSDP2 (CPU, gloo, 2 processes): the planned per-tensor
LR and weight decay reach the optimizer, and training matches the same steps in one eager process."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import proxytune as pt
from proxytune.models import gpt

WORKER = Path(__file__).with_name("dist_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_ddp_and_fsdp2_train_with_the_planned_groups(tmp_path, mode):
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(WORKER), mode,
                           str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["groups_ok"], "a parameter's optimizer group does not carry its planned lr / weight decay"
    assert res["moved"] > 1e-4, "training did not change the weights: the comparison would be vacuous"
    assert res["max_diff"] < 1e-5, f"{mode} differs from one process on the whole batch by {res['max_diff']:.3g}"


def test_torch_compile_matches_eager():
    """The plan's forward state (attention scale attribute, tied readout input multiplier) under compile."""
    torch.manual_seed(0)
    model = gpt.build(width=64, depth=2, n_heads=2, tied=True, seq_len=16, vocab=64)
    plan = pt.parameterize(model, gpt.build(width=32, depth=2, n_heads=2, tied=True, seq_len=16, vocab=64,
                                            device="meta"), recipe="completep")
    assert plan.forward_state()
    eager = copy.deepcopy(model)
    compiled = torch.compile(model)
    opt_c = plan.optimizer(lr=3e-3, weight_decay=0.1, model=compiled)
    opt_e = plan.optimizer(lr=3e-3, weight_decay=0.1, model=eager)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randint(0, 64, (4, 16), generator=gen), torch.randint(0, 64, (4, 16), generator=gen)
        losses = []
        for m, opt in ((compiled, opt_c), (eager, opt_e)):
            loss = F.cross_entropy(m(x).flatten(0, 1), y.flatten())
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (n, p), q in zip(model.named_parameters(), eager.parameters()):  # within 3 % of one step (lr 3e-3)
        assert (p - q).abs().max().item() < 1e-4, n  # Adam turns float noise in tiny gradients into ~lr steps
