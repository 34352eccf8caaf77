"""The model zoo (tests/zoo.py) builds, runs, and its expected-role tables agree with the parameter shapes.

For each family: build at (width 32, depth 2) and (64, 4), one forward each, logits with the vocabulary (or
label) last dim; every parameter name (aliases of tied tensors included) has an expected role, and that role is
consistent with how the tensor's shape changes between width 32 and 64; the residual-branch regex picks the
output projection of every residual branch; the tied tensor is really shared; building twice under one seed
gives the same weights; and the width-32 model builds under ``torch.device("meta")``.
"""

from __future__ import annotations

import re

import pytest
import torch

from zoo import FAMILIES, NUM_LABELS, example_inputs, logits_of

VOCAB, SEQ, W0, D0, W1, D1 = 128, 16, 32, 2, 64, 4


def _build(zm, width, depth, seed=0):
    torch.manual_seed(seed)
    return zm.builder(width, depth, vocab=VOCAB, seq_len=SEQ)


def _forward(zm, model, seq=8):
    torch.manual_seed(1)
    inputs = example_inputs(zm, batch=2, seq=seq, vocab=VOCAB)
    model.eval()
    with torch.no_grad():
        return logits_of(model(**inputs))


def _shape_ok(role: str, a: tuple, b: tuple) -> str | None:
    """Is the change of shape from width W0 (a) to W1 (b) what ``role`` implies? None if so, else why not."""
    if len(a) != len(b):
        return "rank differs"
    changed = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if any(b[i] != a[i] * (W1 // W0) for i in changed):
        return "a dimension does not scale with the width"
    if role == "hidden":
        return None if len(changed) == 2 else f"{len(changed)} width dims, a hidden tensor has 2"
    if role == "embedding":  # finite input side, width output side (tables, position Parameter, patch conv); a
        # lookup table with no width side (T5's relative attention bias, buckets x heads) is one too
        return None if len(changed) <= 1 else f"{len(changed)} width dims, an embedding has at most 1"
    if role == "readout":  # nn.Linear (out, in): only the input side scales
        return None if len(a) == 2 and changed == [1] else f"width dims {changed}, a readout has only [1]"
    if role == "vector":
        return None if len(a) == 1 and changed == [0] else "not a width-sized 1-D tensor"
    if role == "scalar":
        return None if not changed else "a scalar tensor has no width dim"
    return f"unknown role {role!r}"


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(name):
        if name not in cache:
            zm = FAMILIES[name]
            cache[name] = (_build(zm, W0, D0), _build(zm, W1, D1))
        return cache[name]

    return get


def test_registry():
    assert len(FAMILIES) >= 18
    for name, zm in FAMILIES.items():
        assert zm.name == name and zm.builder.__name__ == f"build_{name}"
        assert zm.input in ("tokens", "image")
        assert all(role in ("embedding", "hidden", "readout", "vector", "scalar") for _, role in zm.roles)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family(name, built):
    zm = FAMILIES[name]
    small, big = built(name)

    # forward at both sizes: the last dim is the vocabulary (or the number of labels)
    out_dim = NUM_LABELS if zm.input == "image" else VOCAB
    for model in (small, big):
        logits = _forward(zm, model)
        assert logits.shape[-1] == out_dim and logits.shape[0] == 2
        if zm.input == "tokens":
            assert logits.shape[1] == (1 if zm.last_position_only else 8)
        assert torch.isfinite(logits).all()

    # every name (aliases of tied tensors included) has a role consistent with the shapes at two widths
    shapes0 = {n: tuple(p.shape) for n, p in small.named_parameters(remove_duplicate=False)}
    shapes1 = {n: tuple(p.shape) for n, p in big.named_parameters(remove_duplicate=False)}
    unmatched = [n for n in shapes1 if zm.role_of(n) is None]
    assert not unmatched, f"no expected role for {unmatched}"
    wrong = {n: (zm.role_of(n), shapes0[n], shapes1[n], why) for n in shapes0
             if (why := _shape_ok(zm.role_of(n), shapes0[n], shapes1[n]))}
    assert not wrong, wrong

    # the tied tensor: reported under `tied` by named_parameters() and shared with its aliases
    names = dict(small.named_parameters())
    if zm.tied is None:
        assert not zm.tied_aliases
    else:
        assert zm.tied in names and zm.role_of(zm.tied) == "embedding"
        all_params = dict(small.named_parameters(remove_duplicate=False))
        for alias in zm.tied_aliases:
            assert all_params[alias] is names[zm.tied], alias
            assert alias not in names

    # residual branches: one output tensor (weight; biases may come along) per branch, branches_per_layer each
    for model, depth in ((small, D0), (big, D1)):
        hits = [(n, p) for n, p in model.named_parameters() if re.search(zm.branch, n)]
        weights = [n for n, p in hits if p.dim() >= 2]
        assert len(weights) == zm.branches_per_layer * depth, weights
        for n, p in hits:
            if p.dim() == 1:  # a bias: its weight is a branch output too
                assert n[: -len("bias")] + "weight" in weights, n
            assert zm.role_of(n) in ("hidden", "vector"), n


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_deterministic_and_meta(name, built):
    zm = FAMILIES[name]
    small, _ = built(name)
    again = _build(zm, W0, D0)
    for (n, a), (m, b) in zip(small.state_dict().items(), again.state_dict().items()):
        assert n == m and torch.equal(a, b), n
    with torch.device("meta"):
        model = zm.builder(W0, D0, vocab=VOCAB, seq_len=SEQ)
    params = list(model.parameters())
    assert params and all(p.is_meta for p in params)
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in small.named_parameters()}
    with torch.device("meta"):  # a forward on meta runs too (shapes only)
        logits = logits_of(model(**example_inputs(zm, batch=2, seq=8, vocab=VOCAB)))
    assert logits.is_meta and logits.shape[-1] == (NUM_LABELS if zm.input == "image" else VOCAB)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("width,depth", [(16, 1), (48, 3), (80, 1), (256, 1)])
def test_odd_widths(name, width, depth):
    """Widths that are multiples of 16 but not of 32 (head_dim 4, 12, 20: rotary sizes 2, 6, 10) and the
    largest width."""
    zm = FAMILIES[name]
    torch.manual_seed(0)
    model = zm.builder(width, depth, vocab=VOCAB, seq_len=SEQ)
    assert _forward(zm, model, seq=SEQ).shape[-1]  # the longest sequence: T == seq_len == (NUM_LABELS if zm.input == "image" else VOCAB)


def test_nanogpt_targets_give_full_logits_and_loss():
    zm = FAMILIES["nanogpt"]
    model = _build(zm, W0, D0)
    idx = torch.randint(0, VOCAB, (2, 8))
    logits, loss = model(idx, targets=idx)
    assert logits.shape == (2, 8, VOCAB) and loss.ndim == 0 and torch.isfinite(loss)
    full = _build(FAMILIES["nanogpt_full"], W0, D0)
    full_logits, none = full(idx)
    assert none is None and torch.allclose(full_logits, logits)
    last, none = model(idx)
    assert none is None and torch.allclose(last[:, 0], logits[:, -1], atol=1e-6)
