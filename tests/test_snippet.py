"""The target training snippet reproduces the trainer: groups, schedule, init, clipping and losses."""

from __future__ import annotations

import ast
import copy

import pytest
import torch

from proxytune.train import loop
from proxytune.analysis.snippet import DATA_PLACEHOLDER, training_snippet
from proxytune.train import TrainConfig, schedule_factors, train
from proxytune.train.setup import load_data

TINY = dict(model="gpt", width=32, depth=1, base_width=16, batch_size=4, seq_len=16, steps=10, eval_every=10,
            eval_batches=1, data_options={"max_bytes": 200_000})
# The spec's case: non-default betas, eps, weight decay, WSD with fractional warmup, clipping.
ADAMW = dict(TINY, optimizer="adamw", recipe="mup", betas=(0.8, 0.9), eps=1e-7, weight_decay=0.1,
             schedule="wsd", warmup=0.2, grad_clip=0.5, lr=3e-3)
CASES = {
    "adamw": ADAMW,
    # per-role LR constants, init multipliers, explicit mode, warmup in steps, cosine, no clipping
    "adamw-roles": dict(ADAMW, role_lr={"readout": 0.5, "embedding": 2.0}, role_init={"readout": 0.5},
                        init_scale=0.8, mode="explicit", warmup=3, schedule="cosine", grad_clip=None),
    "sgd": dict(TINY, optimizer="sgd", recipe="mup", momentum=0.8, nesterov=True, lr=0.05, weight_decay=1e-3,
                schedule="linear", warmup=0.2, grad_clip=0.5),
    "muon": dict(TINY, optimizer="muon", recipe="mup", momentum=0.9, betas=(0.85, 0.9), eps=1e-7,
                 weight_decay=0.01, lr=1e-2, schedule="wsd", warmup=0.2, grad_clip=0.5),
    "mlp-teacher": dict(model="mlp", width=32, depth=2, base_width=16, data="teacher", batch_size=16, steps=10,
                        eval_every=10, eval_batches=1, optimizer="adam", recipe="completep", betas=(0.8, 0.9),
                        eps=1e-6, weight_decay=0.1, schedule="wsd", warmup=0.2, grad_clip=0.5, lr=3e-3),
}


def _settings(groups: list[dict], lr_key: str = "lr") -> list[dict]:
    """Each group without its tensors, with its peak LR under 'lr'."""
    out = []
    for g in groups:
        d = {k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
        d["lr"] = g[lr_key]
        d["shapes"] = [tuple(p.shape) for p in g["params"]]
        out.append(d)
    return out


def trainer_run(cfg: TrainConfig, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run ``train(cfg)`` and record its groups (as built), the LRs each step used and the initial weights."""
    rec: dict = {"lrs": []}

    def prepare(c):
        prep = real_prepare(c)
        rec["init"] = copy.deepcopy(prep.model.state_dict())
        make = prep.plan.optimizer

        def optimizer(*args, **kwargs):
            opt = make(*args, **kwargs)
            rec["groups"] = _settings(opt.param_groups)
            step = opt.step

            def recording_step(*a, **k):
                rec["lrs"].append([g["lr"] for g in opt.param_groups])
                return step(*a, **k)

            opt.step = recording_step
            return opt

        prep.plan.optimizer = optimizer
        return prep

    real_prepare = loop.prepare
    monkeypatch.setattr(loop, "prepare", prepare)
    res = train(cfg)
    assert res.status == "complete", res.reason
    rec["losses"] = res.train_losses
    return rec


# next_batch body in the test: the trainer's own batches, and a record of what the snippet has at each step.
FEED = """global rec
    if step == 0:
        rec = {"lrs": [], "losses": [], "groups": _settings(opt.param_groups, "initial_lr"),
               "init": copy.deepcopy(target.state_dict())}
    else:
        rec["losses"].append(float(loss.detach()))
    rec["lrs"].append([g["lr"] for g in opt.param_groups])
    return to_device(data.sample("train", cfg.batch_size, cfg.seq_len, gen))"""


def run_snippet(src: str, cfg: TrainConfig) -> dict:
    assert DATA_PLACEHOLDER in src
    data = load_data(cfg)
    dtype = torch.float32

    def to_device(batch):
        return tuple(t.to(dtype) if t.is_floating_point() else t for t in batch)

    ns = {"_settings": _settings, "copy": copy, "data": data, "cfg": cfg, "to_device": to_device,
          "gen": torch.Generator().manual_seed(cfg.batch_seed), "__name__": "__snippet__"}
    exec(compile(src.replace(DATA_PLACEHOLDER, FEED), "<snippet>", "exec"), ns)
    rec = ns["rec"]
    rec["losses"].append(float(ns["loss"].detach()))
    rec["ns"] = ns
    return rec


@pytest.mark.parametrize("case", list(CASES))
def test_snippet_reproduces_the_trainer(case, monkeypatch):
    cfg = TrainConfig(**CASES[case])
    src = training_snippet(cfg, width=cfg.width, depth=cfg.depth, lr=cfg.lr)
    ast.parse(src)
    assert "# your data here" in src
    want = trainer_run(cfg, monkeypatch)
    got = run_snippet(src, cfg)

    # per-group lr, weight_decay, eps, betas / momentum / nesterov, Muon keys, tensor names
    assert got["groups"] == want["groups"]
    assert len(want["groups"]) > 2  # per-tensor groups, not one plain group
    if "betas" in CASES[case]:
        assert all(g["betas"] == cfg.betas for g in got["groups"])
    if cfg.optimizer == "sgd":
        assert all(g["momentum"] == 0.8 and g["nesterov"] for g in got["groups"])
    if cfg.optimizer == "muon":
        assert any(g["use_muon"] for g in got["groups"]) and any(not g["use_muon"] for g in got["groups"])
        assert all(g["momentum"] == 0.9 for g in got["groups"] if g["use_muon"])
    # the LR each step used: the trainer's, i.e. peak x its schedule factor
    assert got["lrs"] == want["lrs"]
    factors = schedule_factors(cfg.steps, cfg.schedule, cfg.warmup_steps, cfg.final_lr_frac, cfg.cooldown)
    peaks = [g["lr"] for g in want["groups"]]
    assert [[lr / p for lr, p in zip(step, peaks)] == pytest.approx([f] * len(peaks))
            for step, f in zip(got["lrs"], factors)] == [True] * cfg.steps
    assert len(set(factors)) > 2  # warmup and decay both show
    # same init (seeds, base statistics, init multipliers) and the same losses (clipping, schedule, optimizer)
    assert got["init"].keys() == want["init"].keys()
    for k, v in want["init"].items():
        assert torch.equal(got["init"][k], v), k
    assert got["losses"] == pytest.approx(want["losses"], rel=1e-6, abs=1e-7)


def test_snippet_at_a_wider_target_uses_that_width_and_lr():
    cfg = TrainConfig(**ADAMW)
    src = training_snippet(cfg, width=64, depth=2, lr=1e-3)
    ns = {"__name__": "__snippet__"}
    with pytest.raises(NotImplementedError, match="your data here"):
        exec(compile(src, "<snippet>", "exec"), ns)  # runs up to the user's data
    assert ns["target"].wte.weight.shape[1] == 64
    # the readout's muP LR shrinks as base/target width: 1e-3 x 16/64
    from proxytune.plan import parameterize

    plan = parameterize(ns["target"], ns["base"], recipe="mup", optimizer="adamw", apply=False)
    want = plan.param_groups(1e-3, 0.1, eps=1e-7, model=ns["target"])
    lrs = {n: g["initial_lr"] for g in ns["opt"].param_groups for n in g["names"]}
    assert lrs == {g["name"]: g["lr"] for g in want}
    assert min(lrs.values()) == pytest.approx(1e-3 * 16 / 64)


def test_big_target_is_built_on_meta_and_says_why(capsys):
    cfg = TrainConfig(**ADAMW)
    src = training_snippet(cfg, width=64, depth=1, lr=3e-3, memory_bytes=1000)
    assert "device = 'meta'" in src and "pt.Plan.load('plan.json').apply(" in src
    ns = {"__name__": "__snippet__"}
    with pytest.raises(SystemExit) as exc:
        exec(compile(src, "<snippet>", "exec"), ns)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "built on 'meta'" in out and "1000 B" in out and "MiB" in out
    n = sum(p.numel() for p in ns["target"].parameters())
    assert f"{n:,} parameters" in out
    assert all(p.is_meta for p in ns["target"].parameters())
    assert not any(p.is_meta for p in ns["base"].parameters())
    assert len(ns["opt"].param_groups) > 2  # the plan and groups are still built
    # a parameter count beyond this machine's memory does the same without memory_bytes
    assert "device = 'meta'" in training_snippet(cfg, width=64, depth=1, lr=3e-3, params=10**15)


def test_target_that_fits_is_not_on_meta():
    cfg = TrainConfig(**ADAMW)
    for src in (training_snippet(cfg, width=64, depth=1, lr=3e-3, memory_bytes=2**40),
                training_snippet(cfg, width=64, depth=1, lr=3e-3)):
        assert "'meta'" not in src and "SystemExit" not in src
        assert "device = 'cpu'" in src
        ns = {"__name__": "__snippet__"}
        with pytest.raises(NotImplementedError):
            exec(compile(src, "<snippet>", "exec"), ns)
        assert not any(p.is_meta for p in ns["target"].parameters())


USER_BUILDERS = '''
import torch
from torch import nn


def build_net(width, depth, d_in=8, d_out=3):
    layers = [nn.Linear(d_in, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, d_out))


def build_on(width, depth, d_in=8, d_out=3, device=None):
    with torch.device(device or "cpu"):
        return build_net(width, depth, d_in, d_out)
'''


def test_user_builder_import_line_and_run(tmp_path, monkeypatch):
    pkg = tmp_path / "snippet_userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(USER_BUILDERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = dict(width=32, depth=2, base_width=16, data="teacher", model_options={"d_in": 8, "d_out": 3},
                batch_size=16, steps=10, eval_every=10, eval_batches=1, betas=(0.8, 0.9), eps=1e-7,
                weight_decay=0.1, schedule="wsd", warmup=0.2, grad_clip=0.5)

    # a builder without a device argument is built under `with torch.device(device)`
    cfg = TrainConfig(model="snippet_userpkg.nets:build_net", **base)
    src = training_snippet(cfg, width=32, depth=2, lr=cfg.lr)
    lines = src.splitlines()
    assert "from snippet_userpkg.nets import build_net" in lines
    assert "    target = build_net(width=32, depth=2, **options)" in lines
    assert "options = {'d_in': 8, 'd_out': 3}  # the proxies' model options" in lines
    want = trainer_run(cfg, monkeypatch)
    got = run_snippet(src, cfg)
    assert got["groups"] == want["groups"] and got["lrs"] == want["lrs"]
    assert got["losses"] == pytest.approx(want["losses"], rel=1e-6, abs=1e-7)

    # one with a device argument gets device=...; on meta when too big
    cfg = TrainConfig(model="snippet_userpkg.nets:build_on", **base)
    src = training_snippet(cfg, width=64, depth=2, lr=cfg.lr, memory_bytes=1)
    assert "from snippet_userpkg.nets import build_on" in src.splitlines()
    assert "target = build_on(width=64, depth=2, device=device, **options)" in src.splitlines()
    ns = {"__name__": "__snippet__"}
    with pytest.raises(SystemExit):
        exec(compile(src, "<snippet>", "exec"), ns)
    assert all(p.is_meta for p in ns["target"].parameters())

    # a builder that does not import here still gets its import line
    cfg = TrainConfig(model="nosuch_pkg.models:make", data="teacher")
    src = training_snippet(cfg, width=64, depth=2, lr=1e-3)
    assert "from nosuch_pkg.models import make" in src.splitlines()
    ast.parse(src)
