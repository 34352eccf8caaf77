"""The recommendation of ``tune``, its evidence in plain words, and the report (markdown + figures)."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist
from typing import Any, TypeVar

from ..analysis.optimum import Optimum
from ..analysis.predict import BASE_LR_MEANING, count_params
from ..analysis.report import (
    _legend_outside, _plt, _save, data_loss_unit, loss_figure, lr_curves_figure, optima_table, optimum_figure,
)
from ..analysis.verdict import Verdict, loss_gap, loss_se
from ..sweep import Sweep
from ..thresholds import THRESHOLDS
from ..train.config import OPTIMIZER_FIELDS
from .config import TuneConfig
from .results import Candidate, Stage1Result, TargetPrediction, TuneResult
from .search import LR_AXIS

C = TypeVar("C", Candidate, dict)


def _largest(entry: Candidate) -> Optimum | None:
    rows = [o for o in entry.optima if math.isfinite(o.value)]
    return max(rows, key=lambda o: o.group.get("width", 0), default=None)


def _as_candidate(c: Candidate | dict[str, Any]) -> Candidate:
    """A candidate from its dict form (the 0.1.0 form, accepted until 0.3.0)."""
    if isinstance(c, Candidate):
        return c
    return Candidate(recipe=c["recipe"], sweep=c.get("sweep", ""), optima=tuple(c["optima"]), lrs=c.get("lrs", {}),
                     dropped=c.get("dropped"), probe_only=c.get("probe_only"), verdict=c.get("verdict"),
                     depth_optima=c.get("depth_optima"), depth_verdict=c.get("depth_verdict"),
                     one_seed=c.get("one_seed"), one_seed_points=tuple(c.get("one_seed_points", ())),
                     widest_settled=c.get("widest_settled"))


def pick_recommendation(candidates: list[C], cfg: TuneConfig) -> tuple[C, list[str]]:
    """The candidate with the lowest loss at the largest proxy, and why, in words.

    Recipes dropped by the race, and (when depths were verified) recipes whose depth verdict FAILs while
    another's does not, are not eligible. Recipes whose gap to the lowest loss is within the seed noise tie,
    and the tie goes to the better width verdict (PASS over UNRESOLVED over FAIL), then to the lower loss.
    Returns the chosen one of ``candidates`` itself.
    """
    typed = [_as_candidate(c) for c in candidates]
    best, why = _pick(typed, max(cfg.proxy_widths))
    return candidates[typed.index(best)], why


def _state(c: Candidate) -> str:
    return c.verdict.state if c.verdict else "UNRESOLVED"


def _loss(c: Candidate) -> float:
    o = _largest(c)
    return o.loss if o is not None else math.inf


def _pick(candidates: list[Candidate], big: int) -> tuple[Candidate, list[str]]:
    z = NormalDist().inv_cdf(0.5 + THRESHOLDS.confidence / 2)
    eligible = [c for c in candidates if c.dropped is None and (o := _largest(c)) is not None
                and o.group.get("width") == big]
    if any(c.depth_verdict is not None and not c.depth_verdict.failed for c in eligible):
        eligible = [c for c in eligible if c.depth_verdict is None or not c.depth_verdict.failed]
    if not eligible:  # nothing reached the largest width: whatever has a finite optimum
        eligible = [c for c in candidates if _largest(c) is not None] or candidates[:1]
    lowest = min(eligible, key=_loss)
    ol = _largest(lowest)

    def tied(c: Candidate) -> tuple[bool, float, float]:
        oc = _largest(c)
        if c is lowest or oc is None or ol is None or oc.group.get("width") != ol.group.get("width"):
            return c is lowest, 0.0, math.nan
        gap, se = loss_gap(oc, ol)
        return bool(math.isfinite(se) and gap <= z * se), gap, se

    ties = [c for c in eligible if tied(c)[0]]
    best = min(ties, key=_tie_break)
    ob = _largest(best)
    width = ob.group.get("width") if ob else None
    others = [c for c in ties if c is not best]
    head = (f"recommended: {best.recipe} (lowest best loss at the largest proxy, width {width})" if not others
            else _tie_line(best, others, width))
    why = [head, *movement(best)]
    if best.widest_settled and best.probe_only == width:
        why.append(f"{best.recipe} trained width {width} at its transferred LR only (its loss there is at that LR): "
                   f"{best.widest_settled}")
    for c in candidates:
        if c is not best:
            why.append(_compared(c, ob, width, z))
    return best, why


_RANK = {"PASS": 0, "UNRESOLVED": 1, "FAIL": 2}


def _drift_width(c: Candidate) -> float:
    """The width of the 90% interval of a candidate's drift per doubling (inf without a verdict)."""
    if c.verdict is None:
        return math.inf
    lo, hi = c.verdict.drift_interval
    return hi - lo if math.isfinite(hi - lo) else math.inf


def _tie_break(c: Candidate) -> tuple[int, float, float]:
    """Among recipes whose losses tie within the seed noise: the better transfer verdict (PASS, then UNRESOLVED,
    then FAIL), then the narrower drift interval (the better-pinned transfer), then the lower loss."""
    return _RANK[_state(c)], _drift_width(c), _loss(c)


def _tie_line(best: Candidate, others: list[Candidate], width: Any) -> str:
    """The recommendation when losses tie: it says it is a tie, what decided it, and the runner-up's numbers."""
    runner = min(others, key=_tie_break)
    ob, orun = _largest(best), _largest(runner)
    gap, se = loss_gap(orun, ob) if ob is not None and orun is not None else (math.nan, math.nan)
    if _RANK[_state(best)] < _RANK[_state(runner)]:
        reason = f"its transfer verdict is better: {_state(best)} vs {_state(runner)}"
    elif _drift_width(best) < _drift_width(runner):
        reason = (f"both verdicts are {_state(best)}; its drift interval is narrower: "
                  f"{_drift_width(best):.2f} vs {_drift_width(runner):.2f} octaves per doubling")
    else:
        reason = "neither the verdicts nor the drift intervals separate them: the lower loss"
    names = ", ".join(c.recipe for c in others)
    return (f"recommended: {best.recipe}, in a tie at width {width} with {names}: the best losses differ by "
            f"{abs(gap):.4f} against a standard error of {se:.4f}, within the seed noise; chosen because {reason}. "
            f"Runner-up: {runner.recipe} (best loss {orun.loss:.4f} vs {ob.loss:.4f}, transfer verdict "
            f"{_state(runner)})" + ("; either is a defensible choice at this noise"
                                    if _state(runner) == _state(best) else ""))


def _compared(c: Candidate, ob: Optimum | None, width: Any, z: float) -> str:
    """One line on how a candidate that was not chosen compares with the chosen one's optimum ``ob``."""
    oc = _largest(c)
    if c.dropped:
        return f"{c.recipe} dropped out of the race: {c.dropped}"
    if oc is None or ob is None or oc.group.get("width") != width:
        return f"{c.recipe}: no optimum at width {width} to compare"
    if c.one_seed and c.probe_only == width:
        return (f"{c.recipe}: loss {oc.loss:.4f} at width {width} at its transferred LR (2^{oc.value:g}), one seed, "
                f"vs {ob.loss:.4f}: {c.one_seed}; transfer verdict {_state(c)}")
    gap, se = loss_gap(oc, ob)
    within = math.isfinite(se) and abs(gap) <= z * se
    what = (f"loss {oc.loss:.4f} at width {width} at its transferred LR (2^{oc.value:g}; "
            + ("the narrower widths settled its optimum there)" if c.widest_settled
               else "the race scanned the LR there for the leader only)") if c.probe_only == width
            else f"best loss {oc.loss:.4f} at width {width}")
    return (f"{c.recipe}: {what} vs {ob.loss:.4f} ({gap:+.4f}, standard error {se:.4f}: "
            f"{'within' if within else 'beyond'} the seed noise); transfer verdict {_state(c)}")


def movement(entry: Candidate | dict[str, Any]) -> list[str]:
    """Did the optimal LR of a candidate move across the proxies, and by how much (in words)?"""
    entry = _as_candidate(entry)
    v = entry.verdict
    if v is None:
        return []
    lo, hi = v.sizes[0], v.sizes[-1]
    th = v.thresholds["max_drift_per_doubling"]
    state = {"PASS": "it stays put", "FAIL": "it moves: train with the base LR predicted for the target, not the "
                                            "one measured at the base",
             "UNRESOLVED": "too noisy to tell whether it moves"}[v.state]
    return [f"{entry.recipe}: the optimal log2 lr goes from {v.optima[0]:.2f} at width {lo:g} to "
            f"{v.optima[-1]:.2f} at width {hi:g}; fitted drift {v.drift_per_doubling:+.2f} octaves per doubling "
            f"(90% {v.drift_interval[0]:+.2f} .. {v.drift_interval[1]:+.2f}, limit +-{th:g}): {state}"]


def summarize(entry: Candidate | dict[str, Any]) -> dict[str, Any]:
    """A candidate's evidence as plain data (optima per width, verdicts, race outcome): its dict form."""
    return _as_candidate(entry).to_dict()


# ------------------------------------------------------------------ figures
def stage1_figure(s1: Stage1Result, path: Path, loss_unit: str) -> Path | None:
    """One panel per scanned axis: loss vs log2 value in each round's scan, the center and the pick marked."""
    rounds = [r for r in s1.rounds if isinstance(r.round, int)]
    if not rounds:
        return None
    axes = [d["axis"] for d in rounds[0].decisions]
    plt = _plt()
    cols = min(4, len(axes))
    rows_n = math.ceil(len(axes) / cols)
    fig, grid = plt.subplots(rows_n, cols, figsize=(3.4 * cols, 2.8 * rows_n), squeeze=False)
    for k, axis in enumerate(axes):
        ax = grid[k // cols][k % cols]
        for r in rounds:
            d = next(x for x in r.decisions if x["axis"] == axis)
            pts = sorted(d.get("scan", []))
            if not pts:
                continue
            xs = [x for x, _ in pts]
            ys = [y for _, y in pts]
            line = ax.plot(xs, ys, "o-", ms=3, label=f"round {r.round}")[0]
            if d.get("zero") is not None and math.isfinite(d["zero"]):  # a zero init, drawn left of the scan
                ax.plot([min(xs) - 1], [d["zero"]], "x", color=line.get_color(), ms=7)
                ax.annotate("0", (min(xs) - 1, d["zero"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
            pick = d["value"] if axis == LR_AXIS else (math.log2(d["value"]) if d["value"] > 0 else min(xs) - 1)
            if pick is not None:
                ax.axvline(pick, color=line.get_color(), ls=":", lw=1)
        ax.set_title(axis if axis != LR_AXIS else "log2 lr", fontsize=9)
        ax.set_xlabel("log2 value" if axis != LR_AXIS else "log2 lr", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for k in range(len(axes), rows_n * cols):
        grid[k // cols][k % cols].axis("off")
    grid[0][0].set_ylabel(f"val loss ({loss_unit})", fontsize=8)
    _legend_outside(grid[0][-1])
    fig.suptitle("stage 1: one-at-a-time scans at the base (dotted: the value taken; x: a zero init)", fontsize=10)
    return _save(fig, path)


# ------------------------------------------------------------------ report
def _fmt_setting(setting: dict[str, float]) -> str:
    parts = [f"log2 lr {setting[LR_AXIS]:g}"]
    parts += [f"{a} = {v:.3g}" for a, v in setting.items() if a != LR_AXIS and v != 1.0]
    return ", ".join(parts) if len(parts) > 1 else parts[0] + ", every multiplier 1"


def base_gain_line(s1: Stage1Result) -> str:
    """What the tuned constants buy at the base, against the defaults, on the finalists' fresh seeds."""
    w, ctrl = s1.winner, s1.control
    if w.setting == ctrl.setting:
        return ("No tuned setting beat the defaults on the fresh seeds: every multiplier stays 1 "
                f"(loss {ctrl.mean:.4f}).")
    gain = ctrl.mean - w.mean
    se = math.hypot(ctrl.se, w.se) if math.isfinite(ctrl.se) and math.isfinite(w.se) else math.nan
    rel = gain / ctrl.mean if ctrl.mean and math.isfinite(ctrl.mean) else math.nan
    return (f"Tuned constants vs the defaults at the base: {w.mean:.4f} vs {ctrl.mean:.4f}, {gain:.4f} lower "
            f"({rel:.1%}; std error of the difference {se:.4f}).")


def write_report(result: TuneResult, cfg: TuneConfig) -> Path:
    """``report.md`` + figures in the tuning run's directory."""
    unit = data_loss_unit(cfg.data) if cfg.program is None else "the program's units"
    figs = _figures(result, cfg, unit)
    lines = [
        f"# Tuning report: {cfg.name}", "",
        (f"Program `{cfg.program.function or ' '.join(cfg.program.command)}`" if cfg.program is not None
         else f"Model `{cfg.model}`, data `{cfg.data}`") + f", optimizer `{cfg.optimizer}`; base (smallest proxy) width "
        f"{cfg.base_width} x depth {cfg.base_depth}; wider proxies {', '.join(map(str, cfg.proxy_widths))}; "
        f"candidate recipes {', '.join(cfg.candidates)}. Losses are validation losses in {unit}.", "",
        *_recommendation_lines(result), "",
        *_stage1_lines(result.stage1, cfg), "",
        *_stage2_lines(result.candidates), "",
        *_cost_lines(result, cfg), "",
        "## Figures", "", *[f"![{f.stem}]({f.name})" for f in figs], ""]
    path = cfg.run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _figures(result: TuneResult, cfg: TuneConfig, unit: str) -> list[Path]:
    """The report's figures: stage 1's scans, then (with candidates) the LR curves, the optimum and the loss
    against width, the loss law carried to the target when there is one."""
    out = cfg.run_dir
    candidates = result.candidates
    panels = {c.recipe: list(c.optima) for c in candidates if c.optima}
    verdicts: dict[str, Verdict] = {c.recipe: c.verdict for c in candidates if c.verdict}
    figs = []
    f = stage1_figure(result.stage1, out / "stage1_scans.png", unit)
    if f:
        figs.append(f)
    if panels:
        figs.append(lr_curves_figure(panels, out / "verify_lr_curves.png", loss_unit=unit))
        figs.append(optimum_figure(panels, out / "optimum_vs_width.png", verdicts=verdicts))
        points = {}
        for c in candidates:
            rows = sorted((o for o in c.optima if math.isfinite(o.loss)), key=lambda o: o.group["width"])
            points[c.recipe] = ([_params(cfg, int(o.group["width"]), c) for o in rows], [o.loss for o in rows])
        pred = result.prediction
        extrap = None
        if pred and pred.loss and pred.loss_law is not None:
            extrap = {"recipe": result.recipe, "law": pred.loss_law, "target": pred.params,
                      "interval": pred.loss.interval}
        figs.append(loss_figure(points, out / "loss_vs_params.png", extrap, loss_unit=unit))
    return figs


def lr_line(result: TuneResult) -> str:
    """The one learning rate of the answer, labelled as what goes to ``plan.optimizer(lr=...)``, with its interval
    and where it came from."""
    p = result.prediction
    where = f"the target's plan (width {p.width}, depth {p.depth})" if p else "the plan (no target given: the proxies' size)"
    iv = result.lr_interval
    text = f"lr for plan.optimizer(lr=...) of {where}: {result.lr:.4g} (log2 {result.log2_lr:.2f}"
    text += f"; 90% {iv[0]:.3g} .. {iv[1]:.3g})" if iv else ")"
    return text + (f", from {result.lr_source}" if result.lr_source else "")


def setting_lines(p: TargetPrediction) -> list[str]:
    """One line per setting of the target run: value, interval, measured or not, and where it came from."""
    out = []
    for x in p.settings:
        value = f"{x.value:.4g}" if x.name != "steps" else f"{x.value:,.0f}"
        if x.name == "batch_tokens":
            value += " tokens per step"
        iv = f" (90% {x.interval[0]:.3g} .. {x.interval[1]:.3g})" if x.interval else ""
        tag = "" if x.source.startswith(("measured", "not measured", "partly measured", "given")) else (
            "measured: " if x.measured else "not measured: ")
        out.append(f"{x.name} = {value}{iv}: {tag}{x.source}")
    return out


def optimizer_constant_lines(s1: Stage1Result) -> list[str]:
    """The optimizer's own constants stage 1 searched (Muon's LR ratio, the eps or damping multiplier), with the
    value chosen, 1 included; none when it searched none."""
    chosen = {a: v for a, v in s1.winner.setting.items() if a in OPTIMIZER_FIELDS}
    if not chosen:
        return []
    return ["- **optimizer constants** (at the base; muon_lr = lr x muon_lr_ratio and eps x eps_mult are base "
            "values, which the plan scales per tensor as it scales lr and eps): "
            + ", ".join(f"`{k}: {v:g}`" for k, v in chosen.items())]


def _recommendation_lines(result: TuneResult) -> list[str]:
    lines = [
        "## Recommendation", "",
        f"- **recipe**: `{result.recipe}`",
        f"- **{lr_line(result)}**; a base LR is {BASE_LR_MEANING}",
        "- **named multipliers** (at the base, carried by the recipe): "
        + (", ".join(f"`{k}: {v}`" for k, v in result.constants.items() if k not in OPTIMIZER_FIELDS) or "all 1"),
        *optimizer_constant_lines(result.stage1),
        *[f"- note: {n}" for n in result.notes],
        *[f"- {line}" for line in result.recommendation],
    ]
    p = result.prediction
    if p:
        tokens = f"{p.tokens:.3g} tokens" if p.tokens is not None else "tokens not reported"
        lines += [f"- **target** width {p.width} x depth {p.depth} ({p.params / 1e6:.1f} M parameters, "
                  f"{tokens}): trains with the lr above (the training code sets exactly it)"
                  + (f", expected loss {p.loss.value:.4f} (90% {p.loss.interval[0]:.4f} .. "
                     f"{p.loss.interval[1]:.4f})" if p.loss else ", no loss prediction"),
                  "", "### The target run's settings", "",
                  *[f"- {line}" for line in setting_lines(p)], "",
                  *[f"- **trust**: {x}" for x in p.warnings], *[f"- note: {x}" for x in p.notes],
                  (f"- per-tensor plan `{Path(p.plan).name}`, training code `{Path(p.snippet).name}`"
                   if p.plan and p.snippet else "- per-tensor plans of the proxies: the sweeps' `plans/` folders")]
    return lines


def _stage1_lines(s1: Stage1Result, cfg: TuneConfig) -> list[str]:
    lines = ["## Stage 1: constants at the base", "",
             f"Search: {s1.strategy}, {s1.trials} trials at width {cfg.base_width}. Finalists re-run on "
             f"fresh seeds (the search chose on seed 0):", "",
             "| setting | mean loss | std error | seeds |", "|---|---|---|---|"]
    for k, st in enumerate(s1.finalists):
        tag = (" (the defaults)" if k == 0 else "") + (" **chosen**" if st.setting == s1.winner.setting else "")
        lines.append(f"| {_fmt_setting(st.setting)}{tag} | {st.mean:.4f} | {st.se:.4f} | {st.seeds} |")
    lines += ["", base_gain_line(s1), ""]
    for r in s1.rounds:
        moves = [f"{d['axis']} {d['from']:.3g} -> {d['value']:.3g}" + (f" ({d['note']})" if d.get("note") else "")
                 for d in r.decisions if d["value"] != d["from"]]
        lines.append(f"- round {r.round}: " + ("; ".join(moves) or "no change"))
    return lines


def _stage2_lines(candidates: tuple[Candidate, ...]) -> list[str]:
    lines = ["## Stage 2: transfer to the wider proxies", "",
             "| recipe | optimum log2 lr per width (90% interval) | best loss at the largest width | verdict |",
             "|---|---|---|---|"]
    for cand in candidates:
        per = ", ".join(f"{o.group.get('width')}: {o.value:.2f} ({o.interval[0]:.2f}..{o.interval[1]:.2f})"
                        for o in cand.optima)
        ol = _largest(cand)
        v = cand.verdict
        lines.append(f"| {cand.recipe} | {per} | "
                     + (f"{ol.loss:.4f} ± {loss_se(ol):.4f} at {ol.group.get('width')}" if ol else "-")
                     + f" | {v.state if v else '-'}" + (f"; dropped: {cand.dropped}" if cand.dropped else "")
                     + " |")
    lines.append("")
    for cand in candidates:
        if cand.verdict:
            lines.append(f"- **{cand.recipe}**: {cand.verdict.line}")
        if cand.depth_verdict:
            lines.append(f"- **{cand.recipe}** across depth: {cand.depth_verdict.line}")
        for why in cand.one_seed_points:
            lines.append(f"- **{cand.recipe}** trained one seed only at {why}")
        if cand.widest_settled:
            lines.append(f"- **{cand.recipe}** trained the transferred LR only at width {cand.probe_only}: "
                         f"{cand.widest_settled}")
    panels = {c.recipe: list(c.optima) for c in candidates if c.optima}
    lines += ["", "### Optimum per width", "", optima_table(panels)]
    return lines


def _cost_lines(result: TuneResult, cfg: TuneConfig) -> list[str]:
    c = result.cost
    lines = ["## Cost", "",
             f"- {c.trials} proxy trials, {c.flops:.3g} FLOPs in all ("
             + ", ".join(f"{k} {v:.2g}" for k, v in c.per_stage.items()) + ")"]
    if c.vs_lr_sweep_at_largest is not None:
        lines.append(f"- {c.vs_lr_sweep_at_largest:.2f}x the FLOPs of an LR sweep at width {c.largest_width} "
                     f"({len(cfg.search.lr.values())} learning rates x {cfg.verify.seeds} seeds: "
                     f"{c.lr_sweep_at_largest:.3g} FLOPs)")
    if c.vs_target_run is not None:
        lines.append(f"- {c.vs_target_run:.2%} of one training run of the target ({c.target_run:.3g} FLOPs)")
    stage3 = horizon_cost_line(result)
    if stage3:
        lines.append(f"- {stage3}")
    return lines


def horizon_cost_line(result: TuneResult) -> str | None:
    """Stage 3's FLOPs, and as a fraction of one target run, or None when it did not run."""
    c = result.cost
    flops = sum(v for k, v in c.per_stage.items() if k.startswith("horizon"))
    if not flops:
        return None
    of_target = f", {flops / c.target_run:.3%} of one target run" if c.target_run else ""
    return f"stage 3 (horizon and batch at the base width): {flops:.3g} FLOPs{of_target}"


def _params(cfg: TuneConfig, width: int, candidate: Candidate | None = None) -> int:
    if cfg.program is not None:  # the count the program stored with its trials
        sweep = Sweep.open(candidate.sweep) if candidate and candidate.sweep else None
        counts = [r["params"] for r in (sweep.records() if sweep else []) if r.get("width") == width
                  and r.get("params")]
        return int(counts[0]) if counts else 0

    options = dict(cfg.model_options)
    if cfg.model in ("gpt", "moe"):
        options.setdefault("seq_len", cfg.train.get("seq_len", 64))
    return count_params(cfg.model, width, cfg.base_depth, options)
