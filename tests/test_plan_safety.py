"""A saved plan is data: loading and applying one never imports code, never sets an attribute its adapter does
not declare, and a malformed file is a PlanError naming the field."""

import copy
import json
import re
import sys
from dataclasses import fields

import pytest
import torch
from torch import nn

import proxytune as pt
from proxytune.nn.attention import AttributeName, ScaleAttribute
from proxytune.plan import _TENSOR_FIELDS, TensorPlan


class _Attn(nn.Module):
    """Attention whose forward passes ``attn_scale`` to SDPA: the built-in ``scale-attribute`` adapter's kind."""

    def __init__(self, width, head_dim):
        super().__init__()
        self.n_heads, self.head_dim = width // head_dim, head_dim
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.attn_scale = None

    def forward(self, x):
        b, t, w = x.shape
        q, k, v = (z.view(b, t, self.n_heads, self.head_dim).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.attn_scale)
        return self.proj(y.transpose(1, 2).reshape(b, t, w))


class _Net(nn.Module):
    def __init__(self, width=64, head_dim=16, vocab=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.attn = _Attn(width, head_dim)
        self.out = nn.Linear(width, vocab)

    def forward(self, x):
        h = self.emb(x)
        return self.out(h + self.attn(h))


class _Mine(ScaleAttribute):
    """A user adapter: its own name, so a loaded plan needs the object passed; counts its installs."""

    name = "mine"

    def __init__(self, attr="attn_scale"):
        super().__init__(attr)
        self.secret = "not a declared field"
        self.installs = 0

    def install(self, module, site, factor):
        self.installs += 1
        super().install(module, site, factor)


def _fresh(seed=1):
    torch.manual_seed(seed)
    return _Net()


def _plan(attention=()):
    target = _fresh(0)
    plan = pt.parameterize(target, _Net(16, 4), recipe="mup", attention=list(attention))
    return plan, target


def _write(tmp_path, data, name="plan.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _snapshot(model):
    """What a failed apply must leave as it was: every module's type, attributes, plain values and hooks, and the
    weights."""
    mods = [(n, type(m), sorted(vars(m)), {k: v for k, v in vars(m).items() if isinstance(v, (int, float, str))},
             m.__dict__.get("attn_scale", "absent"), len(m._forward_hooks), len(m._forward_pre_hooks))
            for n, m in model.named_modules()]
    return mods, {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before):
    mods, weights = _snapshot(model)
    assert mods == before[0]
    assert weights.keys() == before[1].keys()
    assert all(torch.equal(weights[k], before[1][k]) for k in weights)
    assert not hasattr(model, "_proxytune_plan_digest")


# ------------------------------------------------------------------ no code from the file
def test_a_module_planted_on_sys_path_is_never_imported(tmp_path, monkeypatch):
    folder = tmp_path / "planted"
    folder.mkdir()
    marker = tmp_path / "marker.txt"
    (folder / "planted_adapter_mod.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "from proxytune.nn.attention import ScaleAttribute\n"
        "class Evil(ScaleAttribute):\n"
        "    def install(self, module, site, factor):\n"
        f"        pathlib.Path({str(marker)!r}).write_text('installed')\n")
    monkeypatch.syspath_prepend(str(folder))
    plan, _ = _plan()
    for name in ("scale-attribute", "evil"):  # a built-in's name does not make a foreign class trusted
        data = plan.to_dict()
        data["attention"][0].update(adapter_class="planted_adapter_mod:Evil", adapter=name)
        model = _fresh()
        before = _snapshot(model)
        with pytest.raises(pt.PlanError, match=r"attention\[0\]\.adapter_class.*never imports code.*attention=\[Evil"):
            pt.Plan.load(_write(tmp_path, data)).apply(model)
        assert not marker.exists()
        assert "planted_adapter_mod" not in sys.modules
        _assert_unchanged(model, before)


@pytest.mark.parametrize("ref", ["this:s", "os:system", "builtins:exec", "proxytune.nn.attention:Unknown"])
def test_an_installed_module_named_by_the_file_is_not_imported(tmp_path, ref):
    had_this = sys.modules.pop("this", None)
    try:
        plan, _ = _plan()
        data = plan.to_dict()
        data["attention"][0]["adapter_class"] = ref
        model = _fresh()
        with pytest.raises(pt.PlanError, match="adapter_class"):
            pt.Plan.load(_write(tmp_path, data)).apply(model)
        assert "this" not in sys.modules
    finally:
        if had_this is not None:
            sys.modules["this"] = had_this


@pytest.mark.parametrize("state, field", [
    ({"attr": "__class__"}, "attr"), ({"attr": "__dict__"}, "attr"), ({"attr": "_parameters"}, "attr"),
    ({"attr": "class"}, "attr"), ({"attr": "a.b"}, "attr"), ({"attr": 3}, "attr"), ({"attr": None}, "attr"),
    ({"attr": "attn_scale", "extra": 1}, "extra"), ({"__class__": "x"}, "adapter_state"), ([1], "adapter_state"),
])
def test_hostile_adapter_state_is_refused_on_load(tmp_path, state, field):
    plan, _ = _plan()
    data = plan.to_dict()
    data["attention"][0]["adapter_state"] = state
    model = _fresh()
    before = _snapshot(model)
    with pytest.raises(pt.PlanError, match=rf"attention\[0\]\.adapter_state.*{field}|attention\[0\]\.{field}"):
        pt.Plan.load(_write(tmp_path, data)).apply(model)
    _assert_unchanged(model, before)


@pytest.mark.parametrize("attr", ["forward", "qkv", "training", "missing_attr"])
def test_an_adapter_sets_only_a_number_attribute_the_module_has(tmp_path, attr):
    """A public name is not enough: the attribute must already hold a number (or None), else nothing changes."""
    plan, _ = _plan()
    data = plan.to_dict()
    data["attention"][0]["adapter_state"] = {"attr": attr}
    model = _fresh()
    before = _snapshot(model)
    with pytest.raises(pt.PlanError, match=rf"attention\[0\]\.adapter_state\.attr: .*no number attribute '{attr}'"):
        pt.Plan.load(_write(tmp_path, data)).apply(model)
    _assert_unchanged(model, before)
    assert type(model.attn).forward is _Attn.forward and "forward" not in vars(model.attn)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["tensors"].update({"ghost.weight": {**d["tensors"]["out.weight"], "name": "ghost.weight"}}),
     "Planned but not in the model: ghost.weight"),
    (lambda d: d["attention"][0].update(module="nowhere"), r"attention\[0\]\.module: the model has no module"),
    (lambda d: d["attention"][0].update(module="attn.__class__"), r"attention\[0\]\.module"),
    (lambda d: d["tensors"]["out.weight"].update(readout_use="emb.__class__"), r"readout_use: the model has no"),
    (lambda d: d["tensors"]["emb.weight"].update(lookup_module="__class__"), r"lookup_module: the model has no"),
    (lambda d: d.update(residual=[{"module": "attn", "scales": [1.0, 1.0]}]),
     r"residual\[0\]\.module.*residual_scales"),
    (lambda d: d.update(backward=[{"module": "nope", "kind": "input", "factor": 2.0}]), r"backward\[0\]\.module"),
    (lambda d: d["attention"][0].update(adapter="torch-mha", adapter_class="proxytune.nn.attention:MultiheadAttention",
                                        adapter_state={}), r"attention\[0\]\.module.*MultiheadAttention"),
])
def test_what_the_plan_names_must_be_in_the_model(tmp_path, mutate, match):
    plan, _ = _plan()
    data = plan.to_dict()
    mutate(data)
    model = _fresh()
    before = _snapshot(model)
    with pytest.raises(pt.PlanError, match=match):
        pt.Plan.load(_write(tmp_path, data)).apply(model)
    _assert_unchanged(model, before)


# ------------------------------------------------------------------ malformed files
def _valid(tmp_path):
    plan, _ = _plan()
    return plan.to_dict()


@pytest.mark.parametrize("text, match", [
    (lambda good: good[: len(good) // 2], "invalid JSON at line .* truncated or garbled"),
    (lambda good: good.replace(":", "=", 5), "invalid JSON"),
    (lambda good: "", "invalid JSON"),
    (lambda good: "[" * 200_000, "nested too deeply|invalid JSON"),
    (lambda good: "[1, 2]", "a plan is a JSON object, this is a list"),
    (lambda good: '"plan"', "a plan is a JSON object, this is a string"),
    (lambda good: "null", "a plan is a JSON object, this is null"),
])
def test_unreadable_json_is_a_plan_error(tmp_path, text, match):
    good = json.dumps(_valid(tmp_path), indent=1)
    with pytest.raises(pt.PlanError, match=match):
        pt.Plan.load(_write(tmp_path, text(good)))


def test_binary_and_missing_files_are_plan_errors(tmp_path):
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(pt.PlanError, match="not UTF-8"):
        pt.Plan.load(tmp_path / "bin.json")
    with pytest.raises(pt.PlanError, match="no plan file"):
        pt.Plan.load(tmp_path / "absent.json")
    with pytest.raises(pt.PlanError, match="cannot read"):
        pt.Plan.load(tmp_path)  # a folder


_T = re.escape("tensors['out.weight']")


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("version"), "version"),
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.update(version=True), "version"),
    (lambda d: d.update(version="1"), "version"),
    (lambda d: d.pop("recipe"), "plan.recipe: missing"),
    (lambda d: d.update(recipe=7), "plan.recipe: expected a string"),
    (lambda d: d.update(recipe="nope"), "plan.recipe: unknown"),
    (lambda d: d.update(mode="weird"), "plan.mode"),
    (lambda d: d.update(exec="import os"), "plan.exec: not a field"),
    (lambda d: d.update(tensors=[]), "plan.tensors: expected an object"),
    (lambda d: d.update(notes="hi"), "plan.notes"),
    (lambda d: d.update(attention={}), "plan.attention: expected a list"),
    (lambda d: d["tensors"].update({"out.weight": 3}), rf"{_T}: expected an object"),
    (lambda d: d["tensors"]["out.weight"].pop("fan_in"), rf"{_T}\.fan_in: missing"),
    (lambda d: d["tensors"]["out.weight"].update(shape="64"), rf"{_T}\.shape: expected a list of integers"),
    (lambda d: d["tensors"]["out.weight"].update(fan_in=2.5), rf"{_T}\.fan_in: expected an integer"),
    (lambda d: d["tensors"]["out.weight"].update(base_std=None), rf"{_T}\.base_std: expected a number"),
    (lambda d: d["tensors"]["out.weight"].update(muon=1), rf"{_T}\.muon: expected true or false"),
    (lambda d: d["tensors"]["out.weight"].update(explicit={"lr": "x"}), rf"{_T}\.explicit"),
    (lambda d: d["tensors"]["out.weight"].update(folded={"power": 1.0}), rf"{_T}\.folded"),
    (lambda d: d["tensors"]["out.weight"].update(__init__=1), rf"{_T}\.__init__: not a field"),
    (lambda d: d["tensors"]["out.weight"].update(name="emb.weight"), rf"{_T}\.name: .* differs from its key"),
    (lambda d: d["attention"].append(5), r"attention\[1\]: expected an object"),
    (lambda d: d["attention"][0].pop("module"), r"attention\[0\]\.module: missing"),
    (lambda d: d["attention"][0].update(factor="2"), r"attention\[0\]\.factor: expected a number"),
    (lambda d: d["attention"][0].update(adapter=None), r"attention\[0\]\.adapter: expected a string"),
    (lambda d: d["attention"][0].update(site=None), r"attention\[0\]\.site: expected an object"),
    (lambda d: d["attention"][0]["site"].update(head_dim=1.5), r"attention\[0\]\.site\.head_dim"),
    (lambda d: d["attention"][0]["site"].update(rows=[3, 1]), r"attention\[0\]\.site\.rows"),
    (lambda d: d["attention"][0]["site"].update(value="1/0"), r"attention\[0\]\.site\.value"),
    (lambda d: d["attention"][0].update(adapter="hf-scaling"), r"attention\[0\]\.adapter: 'hf-scaling' is not"),
    (lambda d: d.update(multipliers={"output": "big"}), "multipliers"),
    (lambda d: d.update(multipliers={"lr": [1]}), "multipliers.lr"),
    (lambda d: d.update(multipliers={"lr": {"wizard": 2.0}}), "multipliers"),
    (lambda d: d.update(residual=[{"module": "attn"}]), r"residual\[0\]\.scales: missing"),
    (lambda d: d.update(residual=[{"module": "attn", "scales": [1.0]}]), r"residual\[0\]\.scales"),
    (lambda d: d.update(backward=[{"module": "out", "kind": "what"}]), r"backward\[0\]\.kind"),
    (lambda d: d.update(backward=[{"module": "out", "kind": "logits"}]), r"backward\[0\]\.vocab: missing"),
])
def test_malformed_fields_are_plan_errors_naming_the_field(tmp_path, mutate, field):
    data = _valid(tmp_path)
    mutate(data)
    with pytest.raises(pt.PlanError, match=field) as info:
        pt.Plan.load(_write(tmp_path, data))
    assert type(info.value) is pt.PlanError
    with pytest.raises(pt.PlanError, match=field):
        pt.Plan.from_dict(data)


def test_the_tensor_schema_covers_every_field():
    assert set(_TENSOR_FIELDS) == {f.name for f in fields(TensorPlan)}


# ------------------------------------------------------------------ what still works
def test_built_in_adapters_round_trip(tmp_path):
    plan, target = _plan()
    assert plan.attention[0]["adapter"] == "scale-attribute" and plan.attention[0]["factor"] != 1
    assert plan.attention[0]["adapter_state"] == {"attr": "attn_scale"}
    plan.save(tmp_path / "plan.json")
    loaded = pt.Plan.load(tmp_path / "plan.json")
    assert loaded.to_dict() == plan.to_dict() and loaded.digest() == plan.digest()
    fresh = _fresh()
    loaded.apply(fresh, reinit=False)
    assert fresh.attn.attn_scale == pytest.approx(target.attn.attn_scale)
    x = torch.randint(0, 32, (2, 5))
    fresh.load_state_dict(target.state_dict())
    assert torch.allclose(fresh(x), target(x))
    # a record without adapter_class (the registered name alone) is rebuilt the same way
    data = plan.to_dict()
    del data["attention"][0]["adapter_class"]
    other = _fresh()
    pt.Plan.from_dict(data).apply(other, reinit=False)
    assert other.attn.attn_scale == pytest.approx(target.attn.attn_scale)


def test_a_user_adapter_passed_explicitly_is_used(tmp_path):
    mine = _Mine()
    plan, target = _plan([mine])
    record = plan.attention[0]
    assert record["adapter"] == "mine" and record["adapter_class"].endswith(":_Mine")
    assert record["adapter_state"] == {"attr": "attn_scale"}  # declared fields only: not `secret`, not `installs`
    plan.save(tmp_path / "plan.json")

    again = _Mine()
    fresh = _fresh()
    pt.Plan.load(tmp_path / "plan.json", attention=[again]).apply(fresh)
    assert again.installs == 1 and fresh.attn.attn_scale == pytest.approx(target.attn.attn_scale)

    later = _Mine()
    fresh = _fresh()
    pt.Plan.load(tmp_path / "plan.json").apply(fresh, attention=[later])
    assert later.installs == 1 and fresh.attn.attn_scale == pytest.approx(target.attn.attn_scale)


def test_a_user_adapter_not_passed_says_how_to_pass_it(tmp_path):
    plan, _ = _plan([_Mine()])
    plan.save(tmp_path / "plan.json")
    loaded = pt.Plan.load(tmp_path / "plan.json")  # loading alone needs no adapter (param groups work)
    model = _fresh()
    assert len(loaded.param_groups(1e-3, model=model)) == len(plan.tensors)
    before = _snapshot(model)
    with pytest.raises(pt.PlanError, match=r"Plan\.load\(path, attention=\[_Mine\(\.\.\.\)\]\) or "
                                           r"plan\.apply\(model, attention=\[_Mine"):
        loaded.apply(model)
    _assert_unchanged(model, before)
    # the adapter passed must have the saved settings, and be an object
    with pytest.raises(pt.PlanError, match=r"attention\[0\]\.adapter_state: the plan saved 'mine'"):
        pt.Plan.load(tmp_path / "plan.json", attention=[_Mine("other_scale")])
    with pytest.raises(pt.PlanError, match=r"pass an instance, _Mine\(\)"):
        pt.Plan.load(tmp_path / "plan.json", attention=[_Mine])


def test_unsafe_declared_state_is_refused_when_saving_too():
    with pytest.raises(pt.PlanError, match="public attribute name"):
        ScaleAttribute("__class__")

    class Sneaky(ScaleAttribute):
        name = "sneaky"
        STATE_FIELDS = {"attr": AttributeName, "path": str}

        def __init__(self):
            super().__init__()
            self.path = 7  # declared a string

    with pytest.raises(pt.PlanError, match="path: expected a string"):
        _plan([Sneaky()])


def test_a_parameterized_plan_copies_and_applies_without_a_file():
    plan, target = _plan([_Mine()])
    twin = copy.deepcopy(plan)
    fresh = _fresh()
    twin.apply(fresh)
    assert fresh.attn.attn_scale == pytest.approx(target.attn.attn_scale)
