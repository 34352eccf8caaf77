"""A user's model at intake: builders by file and by module, the forward's output taken as it comes, the
model description in files and on the command line, roles marked when they are guesses, and the errors that
say what to do (docs/your-model.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

import proxytune as pt
from proxytune.builders import load_builder
from proxytune.cli import app
from proxytune.forward import ForwardSpec, check_logits
from proxytune.modelspec import ModelSpec
from proxytune.sweep import SweepConfig
from proxytune.train import TrainConfig, train

ZOO = str(Path(__file__).parent / "zoo.py")
runner = CliRunner()

_USER_MODULE = """
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self, width, vocab):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.out = nn.Linear(width, vocab)

    def forward(self, idx):
        return {"hidden": None, "logits": self.out(torch.relu(self.mix(self.emb(idx))))}

def build(width=32, depth=1, *, vocab=256, seq_len=16):
    return Tiny(width, vocab)
"""


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    (tmp_path / "mymod.py").write_text(_USER_MODULE)
    (tmp_path / "broken.py").write_text("raise RuntimeError('the import itself fails')\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_builders_by_module_from_the_current_directory_and_by_file(user_dir, tmp_path):
    assert callable(load_builder("mymod:build"))  # no PYTHONPATH needed: the current directory is importable
    assert callable(load_builder("./mymod.py:build"))
    assert callable(load_builder(str(user_dir / "mymod.py") + ":build"))
    with pytest.raises(pt.PlanError, match=r"no file 'nofile.py'"):
        load_builder("./nofile.py:build")
    with pytest.raises(pt.PlanError, match=r"cannot import module 'nomod'.*\./nomod\.py:<function>"):
        load_builder("nomod:build")
    with pytest.raises(pt.PlanError, match=r"importing .*broken.py.* raised RuntimeError: the import itself fails"):
        load_builder("./broken.py:build")
    with pytest.raises(pt.PlanError, match=r"has no function 'nothere'"):
        load_builder("mymod:nothere")


def test_the_forward_output_is_taken_as_it_comes():
    t = torch.zeros(2, 3, 5)

    class Out(dict):
        pass

    f = ForwardSpec()
    assert f.logits(t) is t
    assert f.logits((t, None)) is t
    assert f.logits({"loss": None, "logits": t}) is t
    assert f.logits(Out(logits=t)) is t
    assert ForwardSpec(output="scores").logits({"scores": t, "logits": None}) is t
    assert ForwardSpec(output=1).logits((None, t)) is t
    with pytest.raises(pt.PlanError, match="no tensor at 'nope'"):
        ForwardSpec(output="nope").logits({"logits": t})


def test_logits_of_the_last_position_only_are_named():
    y = torch.zeros(2, 8, dtype=torch.long)
    check_logits(torch.zeros(2, 8, 5), y)
    with pytest.raises(pt.PlanError, match=r"only the last position.*targets_arg: targets"):
        check_logits(torch.zeros(2, 1, 5), y)
    with pytest.raises(pt.PlanError, match=r"does not match the targets"):
        check_logits(torch.zeros(2, 7, 5), y)


def test_a_dict_output_model_trains_from_a_model_mapping(user_dir):
    res = train(TrainConfig(model={"builder": "./mymod.py:build"}, width=32, depth=1, steps=3, batch_size=2,
                            seq_len=8, eval_every=3, eval_batches=1))
    assert res.status == "complete" and math.isfinite(res.final_val_loss)


def test_nanogpt_without_its_targets_argument_is_an_error_that_says_what_to_do():
    cfg = dict(width=32, depth=1, steps=2, batch_size=2, seq_len=8, eval_every=2, eval_batches=1)
    with pytest.raises(pt.PlanError, match=r"one position.*targets_arg"):
        train(TrainConfig(model={"builder": f"{ZOO}:build_nanogpt"}, **cfg))
    res = train(TrainConfig(model={"builder": f"{ZOO}:build_nanogpt", "targets_arg": "targets"}, **cfg))
    assert res.status == "complete"


def test_the_model_section_of_a_sweep_file(tmp_path):
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "mymod.py").write_text(_USER_MODULE)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "model": {"builder": "./mymod.py:build", "roles": {"out.weight": "readout"},
                               "block_pattern": r"^layers\.(\d+)\."},
        "base": {"width": 32, "depth": 1}, "axes": {"width": [32, 64], "log2_lr": [-8]},
        "runs_dir": str(tmp_path / "runs")}))
    cfg = SweepConfig.from_yaml(path)
    assert cfg.model == f"{folder / 'mymod.py'}:build"  # relative to the file, made absolute
    assert cfg.model_structure.roles == {"out.weight": "readout"}
    assert cfg.model_structure.block_pattern == r"^layers\.(\d+)\."
    with pytest.raises(ValueError, match=r"model: unknown key 'rolez'"):
        SweepConfig.from_dict({"name": "s", "model": {"builder": "gpt", "rolez": {}}})


def test_sweep_check_refuses_a_model_without_a_readout_before_any_trial(tmp_path):
    (tmp_path / "enc.py").write_text(
        "from torch import nn\n"
        "class Enc(nn.Module):\n"
        "    def __init__(self, w, vocab):\n"
        "        super().__init__(); self.emb = nn.Embedding(vocab, w); self.mix = nn.Linear(w, w)\n"
        "    def forward(self, idx):\n"
        "        return self.mix(self.emb(idx))\n"
        "def build(width=32, depth=1, *, vocab=256, seq_len=16):\n"
        "    return Enc(width, vocab)\n")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "model": "./enc.py:build", "base": {"width": 32, "depth": 1},
                                    "axes": {"width": [32, 64], "log2_lr": [-8]}, "runs_dir": str(tmp_path / "r")}))
    result = runner.invoke(app, ["sweep", str(path), "--check"])
    assert result.exit_code == 2, result.output
    # its output is made by a width-sized matrix: not a readout, so a plan is refused until readout: none
    assert "produces the model's output" in result.output and "readout='none'" in result.output


def test_explain_marks_guessed_roles_when_the_forward_cannot_run():
    class NoForward(nn.Module):  # a forward that fails on any input: the roles come from shapes alone
        def __init__(self, w):
            super().__init__()
            self.table = nn.Parameter(torch.randn(16, w))
            self.head = nn.Linear(w, 10)

        def forward(self, x):
            raise RuntimeError("needs a batch proxytune does not have")

    plan = pt.parameterize(NoForward(64), NoForward(32))
    assert plan.tensors["table"].role == "embedding" and plan.tensors["table"].role_source == "guess"
    assert plan.tensors["head.weight"].role_source == "module"
    text = plan.explain()
    assert "embedding?" in text and "could not be traced" in text


def test_command_line_model_description(tmp_path):
    """explain / coord-check take the description as options or as a file; nanoGPT needs its targets argument."""
    spec = tmp_path / "model.yaml"
    spec.write_text(yaml.safe_dump({"model": {"builder": f"{ZOO}:build_nanogpt", "targets_arg": "targets"}}))
    args = ["--widths", "32,64", "--seeds", "1", "--figure", ""]
    bare = runner.invoke(app, ["coord-check", "--model", f"{ZOO}:build_nanogpt", *args])
    assert bare.exit_code == 2 and "targets_arg" in bare.output
    flag = runner.invoke(app, ["coord-check", "--model", f"{ZOO}:build_nanogpt", "--targets-arg", "targets", *args])
    assert flag.exit_code == 0, flag.output
    assert "PASS" in flag.output and "attn-logits:transformer.h.0.attn" in flag.output
    filed = runner.invoke(app, ["coord-check", "--model", str(spec), *args, "--json"])
    assert filed.exit_code == 0 and json.loads(filed.output)["passed"]
    out = runner.invoke(app, ["explain", "--model", str(spec), "--width", "128", "--depth", "2", "--base-width", "32",
                              "--base-depth", "2", "--role", "transformer.wpe.weight=embedding"])
    assert out.exit_code == 0, out.output
    assert "query-rows" in out.output and "role from override" in out.output
    bad = runner.invoke(app, ["explain", "--model", str(spec), "--width", "64", "--depth", "2", "--base-width", "32",
                              "--base-depth", "2", "--role", "nonsense"])
    assert bad.exit_code == 2 and "GLOB=ROLE" in bad.output


def test_a_model_spec_round_trips_through_a_train_config():
    spec = ModelSpec(builder="gpt", options={"tied": True}, roles={"wte.weight": "embedding"}, targets_arg=None,
                     branch_outputs=["*.proj.*"])
    cfg = TrainConfig(model=spec.model_dump(), width=32, depth=1)
    assert cfg.model == "gpt" and cfg.model_options == {"tied": True}
    assert cfg.model_spec() == spec
    assert TrainConfig(**cfg.model_dump()).model_spec() == spec  # a stored run config rebuilds the same model
