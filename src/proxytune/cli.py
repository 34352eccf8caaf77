"""The ``proxytune`` command line."""

from __future__ import annotations

import inspect
import json
import os
import signal
import sys
import threading
import warnings
import time
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import torch
import typer

from .builders import build_model, load_builder
from .plan import parameterize
from .rules.recipes import OPTIMIZERS, RECIPES, WD_POLICIES
from .shapes import PlanError
from .thresholds import THRESHOLDS

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="proxytune: tune hyperparameters on small proxies, train the big model once.")

def _parse_options(options: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in options:
        if "=" not in item:
            raise PlanError(f"--option {item!r}: expected key=value")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# The model description on the command line (the same fields as a model: mapping; see proxytune.modelspec).
_MODEL_HELP = ("built-in name (gpt, mlp, moe), pkg.module:build_fn, path/file.py:build_fn, or a YAML file holding a "
               "model: mapping (builder, options, roles, block_pattern, ...)")
_ROLE = typer.Option([], "--role", help="role override GLOB=ROLE (repeatable): embedding, hidden, readout, vector, "
                     "scalar")
_BLOCK_PATTERN = typer.Option(None, "--block-pattern", help="regex whose group 1 is the block index")
_BRANCH = typer.Option([], "--branch-output", help="glob of a residual-branch output tensor (repeatable)")
_ATTENTION = typer.Option([], "--attention", help="attention adapter (repeatable): scale-attribute:ATTR, "
                          "hf-scaling:ATTR, query-projection:NAME, or pkg.module:Class")
_TARGETS_ARG = typer.Option(None, "--targets-arg", help="the forward's targets argument (nanoGPT: targets)")
_OUTPUT = typer.Option(None, "--output", help="key, attribute or index of the logits in the forward's output")
_INPUT = typer.Option(None, "--input", help="the model's input: tokens, image, features (default: auto)")
_READOUT = typer.Option(None, "--readout", help="auto, or none when the output is not produced by a weight matrix")


def _model_spec(model: str, option: list[str], role: list[str], block_pattern: str | None, branch: list[str],
                attention: list[str], targets_arg: str | None, output: str | None, input_kind: str | None,
                readout: str | None) -> Any:
    """One :class:`~proxytune.modelspec.ModelSpec` from ``--model`` (a builder or a YAML file) and the options."""
    from .modelspec import ModelSpec

    spec = ModelSpec.from_value(model)
    update: dict[str, Any] = {}
    if option:
        update["options"] = {**spec.options, **_parse_options(option)}
    if role:
        roles = {}
        for item in role:
            glob, sep, name = item.rpartition("=")
            if not sep or not glob:
                raise PlanError(f"--role {item!r}: expected GLOB=ROLE, e.g. lm_head.weight=readout")
            roles[glob] = name
        update["roles"] = {**spec.roles, **roles}
    for key, value in (("block_pattern", block_pattern), ("targets_arg", targets_arg), ("input", input_kind),
                       ("readout", readout)):
        if value is not None:
            update[key] = value
    if output is not None:
        update["output"] = int(output) if output.lstrip("-").isdigit() else output
    if branch:
        update["branch_outputs"] = list(branch)
    if attention:
        update["attention"] = [*spec.attention, *attention]
    if update:
        spec = ModelSpec.from_value({**spec.model_dump(), **update})
    return spec


@app.command()
def explain(
    model: str = typer.Option("gpt", help=_MODEL_HELP),
    width: int = typer.Option(..., help="target width"),
    depth: int = typer.Option(..., help="target depth (blocks)"),
    base_width: int = typer.Option(..., help="base (proxy) width where HPs are tuned"),
    base_depth: int = typer.Option(..., help="base (proxy) depth"),
    recipe: str = typer.Option("mup", help=f"one of: {', '.join(RECIPES)}"),
    optimizer: str = typer.Option("adamw", help=f"one of: {', '.join(OPTIMIZERS)}"),
    mode: str = typer.Option("folded", help="folded (zero overhead) or explicit"),
    alignment: str = typer.Option("full", help="full or none (Everett et al. table column)"),
    weight_decay_policy: str = typer.Option("independent", help=f"one of: {', '.join(WD_POLICIES)}"),
    lr: Optional[float] = typer.Option(None, help="base LR: show absolute per-tensor LRs"),
    wd: Optional[float] = typer.Option(None, help="base weight decay"),
    eps: Optional[float] = typer.Option(None, help="base Adam eps"),
    option: list[str] = typer.Option([], help="builder option key=value (repeatable)"),
    mult: list[str] = typer.Option([], help="named multiplier at the base, key=value (repeatable): lr.<role>, "
                                   "init.<role>, output, embedding, attention"),
    save: Optional[str] = typer.Option(None, help="write the plan as JSON to this path"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON instead of a table"),
    seed: int = typer.Option(0, help="seed for building the base"),
    run_check: bool = typer.Option(False, "--check", help="also run the quick coordinate check for this plan "
                                   "(exit 1 when it fails)"),
    role: list[str] = _ROLE, block_pattern: Optional[str] = _BLOCK_PATTERN, branch_output: list[str] = _BRANCH,
    attention: list[str] = _ATTENTION, targets_arg: Optional[str] = _TARGETS_ARG, output: Optional[str] = _OUTPUT,
    input_kind: Optional[str] = _INPUT, readout: Optional[str] = _READOUT,
) -> None:
    """Print the per-tensor plan (role, multipliers, init std, lr, wd, eps) for a target/base pair; roles marked ?
    were guessed from shapes, branch outputs marked ~ from the module structure."""
    try:
        spec = _model_spec(model, option, role, block_pattern, branch_output, attention, targets_arg, output,
                           input_kind, readout)
        fn = load_builder(spec.builder)
        opts = dict(spec.options)
        torch.manual_seed(seed)
        base = build_model(fn, base_width, base_depth, "cpu", opts)  # small: exact init statistics
        target = build_model(fn, width, depth, "meta", opts)  # any size, free
        from .rules.multipliers import Multipliers

        seq_len = opts.get("seq_len") if isinstance(opts.get("seq_len"), int) else None
        plan = parameterize(target, base, recipe=recipe, optimizer=optimizer, mode=mode,
                            alignment=alignment, weight_decay=weight_decay_policy,
                            multipliers=Multipliers.from_items(mult), seq_len=seq_len,
                            **spec.structure().plan_kwargs())
        if lr is not None and lr <= 0:
            raise PlanError(f"--lr must be > 0, got {lr}")
    except (PlanError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if save:
        plan.save(save)
    if as_json:
        typer.echo(json.dumps(plan.to_dict(), indent=1))
    else:
        typer.echo(plan.explain(lr=lr, weight_decay=wd, eps=eps))
    if run_check:
        _explain_check(spec, width, depth, base_width, base_depth, recipe, optimizer, lr, {})


def _config_error(exc: Exception) -> str:
    """One readable line per problem, for pydantic and plain errors alike."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())
    return str(exc)


def _load_config_file(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise ValueError(f"cannot read config file {path!r}: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of TrainConfig fields")
    return data


# The flags of `proxytune train` that set a TrainConfig field, each (field, flag's parameter name, what the command
# line adds to the field's description). Type, choices, default and the description itself come from TrainConfig,
# so a field that changes there changes here.
_TRAIN_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("model", "model", ""), ("width", "width", ""), ("depth", "depth", ""),
    ("base_width", "base_width", "the width when not given"), ("base_depth", "base_depth", "the depth when not given"),
    ("recipe", "recipe", ""), ("optimizer", "optimizer", ""), ("lr", "lr", ""), ("weight_decay", "wd", ""),
    ("eps", "eps", ""), ("steps", "steps", ""), ("batch_size", "batch_size", ""), ("seq_len", "seq_len", ""),
    ("schedule", "schedule", ""), ("warmup", "warmup", ""), ("data", "data", ""),
    ("seed", "seed", ""), ("threads", "threads", ""), ("device", "device", ""), ("precision", "precision", ""),
    ("eval_every", "eval_every", ""), ("grad_clip", "grad_clip", "0 turns clipping off"),
)


def _train_flag(field: str, name: str, extra: str) -> inspect.Parameter:
    """The typer option of TrainConfig field ``field``: its description, choices and default as help."""
    from .train.config import TrainConfig, field_choices

    info = TrainConfig.model_fields[field]
    types = [t for t in (typing.get_args(info.annotation) or (info.annotation,)) if t is not type(None)]
    kind = float if float in types else int if types == [int] else str  # int | float (warmup) reads as float
    choices = field_choices(field)
    text = "; ".join(p for p in (f"one of: {', '.join(choices)}" if choices else "",
                                 info.description or field.replace("_", " "), extra) if p)
    if info.default is not None:
        text += f" \\[default: {info.default}]"  # escaped: rich would read [x] as markup
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                             default=typer.Option(None, help=text))


def train(**flags: Any) -> None:
    """Train one model (progress bar, then a result table)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .train import make_config
    from .train import train as run_training

    as_json, save = flags["as_json"], flags["save"]
    given = {field: flags[name] for field, name, _ in _TRAIN_FLAGS}
    if given["warmup"] is not None:
        given["warmup"] = int(given["warmup"]) if given["warmup"] >= 1 else given["warmup"]
    clip_off = given["grad_clip"] is not None and given["grad_clip"] <= 0  # 0 turns clipping off
    try:
        fields = _load_config_file(flags["config"]) if flags["config"] else {}
        fields.update({k: v for k, v in given.items() if v is not None})
        if clip_off:
            fields["grad_clip"] = None
        if flags["option"]:
            fields["model_options"] = {**fields.get("model_options", {}), **_parse_options(flags["option"])}
        if flags["data_option"]:
            fields["data_options"] = {**fields.get("data_options", {}), **_parse_options(flags["data_option"])}
        cfg = make_config(**fields)
    except Exception as exc:  # noqa: BLE001 - every config problem is a user error here
        typer.echo(f"error: {_config_error(exc)}", err=True)
        raise typer.Exit(2) from None

    console = Console(stderr=True)
    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=True, disable=as_json) as bar:
            task = bar.add_task("train", total=cfg.steps, loss="-")
            result = run_training(cfg, progress=lambda step, total, loss: bar.update(
                task, completed=step, loss=f"{loss:.4f}"))
    except (PlanError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if save:
        with open(save, "w") as fh:
            fh.write(result.to_json())
    if as_json:
        typer.echo(result.to_json())
        return
    _print_result(Console(), result)


def _option(name: str, annotation: Any, option: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option)


train.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    *(_train_flag(field, name, extra) for field, name, extra in _TRAIN_FLAGS),
    _option("data_option", list[str], typer.Option([], help="data loader option key=value, e.g. vocab_size=50304")),
    _option("option", list[str], typer.Option([], help="model builder option key=value (repeatable)")),
    _option("config", Optional[str], typer.Option(None, help="YAML/JSON file of TrainConfig fields (flags override "
                                                             "it)")),
    _option("save", Optional[str], typer.Option(None, help="write the full RunResult as JSON to this path")),
    _option("as_json", bool, typer.Option(False, "--json", help="print the RunResult as JSON instead of a table")),
])
app.command()(train)


def _print_result(console: Any, result: Any) -> None:
    from rich.table import Table

    cfg = result.config
    title = (f"{cfg['model']} width {cfg['width']} depth {cfg['depth']}, {cfg['recipe']} + {cfg['optimizer']}, "
             f"lr {cfg['lr']:g}")
    console.print(f"[bold]{title}[/bold]")
    table = Table()
    table.add_column("step", justify="right")
    table.add_column("train loss", justify="right")
    table.add_column("val loss", justify="right")
    for e in result.evals:
        table.add_row(str(e["step"]), f"{e['train_loss']:.4f}", f"{e['val_loss']:.4f}")
    console.print(table)
    summary = Table(show_header=False)
    for key, value in result.summary().items():
        shown = f"{value:.4f}" if isinstance(value, float) and key.endswith("loss") else (
            f"{value:.3g}" if key == "flops" else str(value))
        summary.add_row(key, shown)
    if result.diverged:
        summary.add_row("diverged at step", f"{result.diverged_step} ({result.reason})")
    console.print(summary)


def _explain_check(model: Any, width: int, depth: int, base_width: int, base_depth: int, recipe: str,
                   optimizer: str, lr: float | None, options: dict[str, Any]) -> None:
    """The quick coordinate check for an explained plan: widths from the base up (at most 4, capped for CPU)."""
    from .diagnose import coord_check

    sizes = [base_width]
    while sizes[-1] * 2 <= min(width, 8 * base_width, 512) and len(sizes) < 4:
        sizes.append(sizes[-1] * 2)
    if len(sizes) < 2:
        sizes.append(base_width * 2)
    # the check's own LR and seeds (proxytune.thresholds), not --lr: the same evidence as coord-check and check
    result = _sweep_errors(lambda: coord_check(model, widths=sizes, depth=min(depth, base_depth), recipe=recipe,
                                               optimizer=optimizer, model_options=options))
    typer.echo(f"\nquick coordinate check (widths {sizes}, depth {min(depth, base_depth)}, lr {THRESHOLDS.coord_lr:g}, "
               f"{THRESHOLDS.coord_seeds} seeds):")
    typer.echo(result.table())
    if not result.passed:
        raise typer.Exit(1)


# ------------------------------------------------------------------ sweeps
def _sweep_errors(fn: Callable[[], Any]) -> Any:
    from .data import DataError
    from .sweep import SweepConfigError
    from .sweep.errors import StorageError

    try:
        return fn()
    except (SweepConfigError, DataError, PlanError, ValueError) as exc:
        # one line, whatever the message quotes (a key with a newline in it, a parser's multi-line text)
        text = " ".join(_config_error(exc).split("\n"))
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
        typer.echo(f"error: {text}", err=True)
        raise typer.Exit(2) from None
    except StorageError as exc:  # not the user's input: the database went away or the disk filled mid-command
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(1) from None


class _Stop(KeyboardInterrupt):
    """SIGTERM or SIGHUP to a command that runs sweeps: handled as Ctrl-C is (workers stopped, running trials
    given back), with the signal's own exit status."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _stop_signals() -> Iterator[None]:
    """While sweeps run, SIGTERM and SIGHUP stop them the way Ctrl-C does. SIGHUP goes through SIGTERM's handler,
    the one the sweep's own code holds and watches (a trial being claimed, a function trial). Only the first
    stop raises: a second one must not cut the hand-back short (kill -9 still ends it, and the workers then
    stop on their own). Handlers can only be set in the main thread; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state: dict[str, Any] = {"signum": None, "raised": False}

    def on_hangup(signum: int, frame: Any) -> None:
        state["signum"] = state["signum"] or signum
        os.kill(os.getpid(), signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        if not state["raised"]:
            state["raised"] = True
            raise _Stop(state["signum"] or signum)

    saved = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_term),
             signal.SIGHUP: signal.signal(signal.SIGHUP, on_hangup)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _stopped(console: Any, exc: BaseException, again: str) -> typer.Exit:
    """Say how to continue a stopped run; the exit status is 128 + the signal (130 for Ctrl-C)."""
    try:
        console.print(f"stopped; `{again}` continues", style="yellow", markup=False, highlight=False,
                      soft_wrap=True)
    except OSError:
        pass  # the terminal is gone (SIGHUP): the exit status still tells
    return typer.Exit(128 + getattr(exc, "signum", signal.SIGINT))


def _status_tables(status: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    counts = Table(title="trials", show_header=True)
    for key in status["counts"]:
        counts.add_column(key, justify="right")
    counts.add_row(*(str(v) for v in status["counts"].values()))
    best = Table(title="best per size")
    best.add_column("size")
    best.add_column("best point")
    best.add_column("val loss", justify="right")
    best.add_column("trial", justify="right")
    for row in sorted(status["best"], key=lambda r: repr(r["size"])):
        best.add_row(_fmt_point(row["size"]) or "-", _fmt_point(row["best"]), f"{row['val_loss']:.4f}",
                     str(row["trial"]))
    return [counts, best]


def _fmt_point(point: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())


def _run_sweep(sweep: Any) -> None:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .sweep.runner import best_per_group

    console = Console()
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console)
    task = bar.add_task(sweep.cfg.name, total=None, detail="")
    state: dict[str, Any] = {"last_table": 0.0, "tables": []}

    def on_poll(counts: dict[str, int], store: Any) -> None:
        finished = counts["complete"] + counts["diverged"] + counts["pruned"] + counts["failed"]
        total = finished + counts["running"] + counts["waiting"]
        detail = ", ".join(f"{k} {v}" for k, v in counts.items() if v and k != "complete")
        bar.update(task, completed=finished, total=total, detail=detail)
        if time.time() - state["last_table"] > 5:
            state["tables"] = _status_tables({"counts": counts, "best": best_per_group(store.records())})[1:]
            state["last_table"] = time.time()
            live.update(Group(bar, *state["tables"]))

    with Live(Group(bar), console=console, refresh_per_second=4, transient=True) as live:
        try:
            with _stop_signals():
                counts = sweep.run(on_poll=on_poll)
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: the running trials were given back
            raise _stopped(console, exc, f"proxytune resume {sweep.cfg.run_dir}") from None
    for table in _status_tables({"counts": counts, "best": best_per_group(sweep.records())}):
        console.print(table)
    console.print(f"results: {sweep.cfg.run_dir}  (proxytune status / export {sweep.cfg.run_dir})")
    from .sweep.tracking import dashboard_command

    trackers = sweep.trackers()
    for name, where in (trackers.destinations() if trackers is not None else {}).items():
        console.print(f"{name}: {where}")
    console.print(f"browse the trials: {dashboard_command(sweep.cfg.storage_url())}  (pip install optuna-dashboard)")


@app.command()
def sweep(
    config: str = typer.Argument(..., help="sweep YAML file"),
    workers: Optional[int] = typer.Option(None, help="worker processes (overrides executor.workers)"),
    threads: Optional[int] = typer.Option(None, help="torch threads per worker"),
    batch: Optional[int] = typer.Option(None, help="trials trained together per worker (1 = off)"),
    check: bool = typer.Option(False, "--check", help="check the file, its data, model shapes and devices; run "
                                                      "nothing and write nothing"),
    accept_data_change: bool = typer.Option(False, "--accept-data-change",
                                            help="go on although the data file changed since the sweep started "
                                                 "(its trials then mix two versions of the data)"),
) -> None:
    """Run (or continue) the sweep described in CONFIG: progress bar and live table of the best trials."""
    from .sweep import Sweep

    sw = _sweep_errors(lambda: Sweep.from_yaml(config).with_executor(workers=workers, threads=threads, batch=batch))
    sw.accept_data_change = accept_data_change
    if check:
        _sweep_errors(sw.check)
        typer.echo(f"{config}: ok ({sw.cfg.strategy.kind} sweep {sw.cfg.name!r} -> {sw.cfg.run_dir})")
        return
    _sweep_errors(lambda: _run_sweep(sw))


@app.command()
def repair(
    run_dir: str = typer.Argument(..., help="the sweep's directory"),
    cut_at: int = typer.Option(..., "--cut-at", help="the byte offset the corruption error named"),
) -> None:
    """Cut a corrupt journal at a record boundary: the records before it are kept, the rest go to a side file."""
    from .sweep import Sweep
    from .sweep.journal import cut_journal

    sw = _sweep_errors(lambda: Sweep.open(run_dir))
    url = sw.cfg.storage_url()
    if "://" in url:
        typer.echo(f"error: {url} is a database, not a journal file; repair it with the database's own tools",
                   err=True)
        raise typer.Exit(2)
    try:
        done = cut_journal(url, cut_at)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"cut {url} at byte {done['offset']}: {done['bytes']} bytes moved to {done['side_file']}; "
               f"proxytune resume {run_dir} re-runs what they held")


@app.command()
def resume(
    run_dir: str = typer.Argument(..., help="the sweep's directory, e.g. runs/my-sweep"),
    workers: Optional[int] = typer.Option(None, help="worker processes"),
    threads: Optional[int] = typer.Option(None, help="torch threads per worker"),
    batch: Optional[int] = typer.Option(None, help="trials trained together per worker"),
    accept_data_change: bool = typer.Option(False, "--accept-data-change",
                                            help="go on although the data file changed since the sweep started "
                                                 "(its trials then mix two versions of the data)"),
) -> None:
    """Continue a sweep after a crash, kill or reboot: finished trials are kept, lost ones re-run."""
    from .sweep import Sweep

    sw = _sweep_errors(lambda: Sweep.open(run_dir).with_executor(workers=workers, threads=threads, batch=batch))
    sw.accept_data_change = accept_data_change
    _sweep_errors(lambda: _run_sweep(sw))


@app.command()
def status(
    run_dir: str = typer.Argument(..., help="the sweep's directory, e.g. runs/my-sweep"),
    as_json: bool = typer.Option(False, "--json", help="print as JSON"),
) -> None:
    """Trials done / running / waiting / diverged / failed, and the best trial per size."""
    from rich.console import Console

    from .sweep import Sweep

    st = _sweep_errors(lambda: Sweep.open(run_dir).status())
    if as_json:
        typer.echo(json.dumps(st, default=str))
        return
    for table in _status_tables(st):
        Console().print(table)


@app.command()
def export(
    run_dir: str = typer.Argument(..., help="the sweep's directory"),
    fmt: str = typer.Option("csv", "--format", help="csv or parquet"),
    out: Optional[str] = typer.Option(None, help="output path (default: RUN_DIR/trials.<format>)"),
) -> None:
    """Write one row per trial (axes, status, losses, tokens, wall time) for your own analysis."""
    from .sweep import Sweep

    sw = _sweep_errors(lambda: Sweep.open(run_dir))
    path = out or str(Path(run_dir) / f"trials.{fmt}")
    written = _sweep_errors(lambda: sw.export(path, fmt))
    typer.echo(str(written))


# ---------------------------------------------------------------- analysis
@app.command()
def analyze(
    run_dir: str = typer.Argument(..., help="the sweep's directory"),
    hp: str = typer.Option("log2_lr", help="the HP axis whose optimum is sought"),
    size_axis: str = typer.Option("width", help="the axis along which transfer is judged"),
    as_json: bool = typer.Option(False, "--json", help="print as JSON"),
) -> None:
    """Optimum per size (with 90% interval) and the transfer verdict of a sweep."""
    from rich.console import Console
    from rich.table import Table

    from .analysis.optimum import optima_by_group
    from .analysis.verdict import verdict_with_gaps
    from .sweep import Sweep

    records = _sweep_errors(lambda: Sweep.open(run_dir).records())
    if not any(hp in r for r in records):
        typer.echo(f"error: the sweep has no axis {hp!r}", err=True)
        raise typer.Exit(2)
    optima = optima_by_group(records, hp)
    if not optima:
        typer.echo("no finished trials yet: proxytune status shows what is running", err=True)
        raise typer.Exit(2)
    verdict, gaps = verdict_with_gaps(optima, size_axis, hp)
    if as_json:
        typer.echo(json.dumps({"optima": [o.to_dict() for o in optima],
                               "verdict": verdict.to_dict() if verdict else None, "missing": gaps}, default=str))
        return
    table = Table(title=f"optimum of {hp} per size")
    for col in ("size", "optimum (90% interval)", "best grid point", "loss", "notes"):
        table.add_column(col)
    for o in optima:
        table.add_row(_fmt_point(o.group), f"{o.value:.2f} ({o.interval[0]:.2f} .. {o.interval[1]:.2f})",
                      f"{o.best_grid_value:g}", f"{o.best_grid_loss:.4f}", "; ".join(o.notes) or "-")
    console = Console()
    console.print(table)
    if verdict:
        console.print(verdict.line)
        for line in verdict.advice:
            console.print(f"- {line}")
    else:
        console.print(f"no transfer verdict: needs a finite optimum at 2 or more values of {size_axis!r}")
    for line in gaps:
        console.print(f"[bold yellow]missing:[/bold yellow] {line}")


@app.command()
def predict(
    run_dir: Optional[str] = typer.Argument(None, help="the sweep's directory (omit with --rule)"),
    width: Optional[int] = typer.Option(None, help="target width"),
    depth: Optional[int] = typer.Option(None, help="target depth [the proxies' depth]"),
    tokens: Optional[float] = typer.Option(None, help="target training tokens"),
    batch_tokens: Optional[float] = typer.Option(None, "--batch-tokens",
                                                 help="target tokens per step [the largest swept]"),
    hp: str = typer.Option("log2_lr", help="the HP axis to predict"),
    rule: Optional[str] = typer.Option(None, help="a rule of thumb instead of a sweep (see: proxytune rules)"),
    params: Optional[float] = typer.Option(None, help="parameter count N of the target (--rule; or for a sweep of "
                                                      "your own program, when it cannot be fitted)"),
    input_: list[str] = typer.Option([], "--input", help="--rule: other inputs key=value (repeatable)"),
    plan_out: Optional[str] = typer.Option(None, "--plan", help="write the target's per-tensor plan JSON here"),
    as_json: bool = typer.Option(False, "--json", help="print as JSON"),
) -> None:
    """Target HPs + expected loss + interval from a sweep's laws (or a rule of thumb), and the target's plan."""
    if rule is not None:
        _predict_rule(rule, input_, params, tokens, as_json)
        return
    if run_dir is None or width is None:
        typer.echo("error: give a sweep directory and --width (or --rule NAME with its inputs)", err=True)
        raise typer.Exit(2)
    from .analysis.predict import predict_from_sweep
    from .sweep import Sweep

    sw = _sweep_errors(lambda: Sweep.open(run_dir))
    path = plan_out or str(Path(run_dir) / f"plan-width{width}.json")
    result = _sweep_errors(lambda: predict_from_sweep(sw, width, depth, tokens, hp, plan_path=path, params=params,
                                                      batch_tokens=batch_tokens))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), default=str))
        return
    _print_prediction(result, path)


def _predict_rule(rule: str, input_: list[str], params: float | None, tokens: float | None, as_json: bool) -> None:
    """``predict --rule``: a rule of thumb's answer, printed."""
    from .analysis.rules_of_thumb import apply_rule

    inputs = _parse_options(input_)
    if params is not None:
        inputs["params"] = params
    if tokens is not None:
        inputs["tokens"] = tokens
    result = _sweep_errors(lambda: apply_rule(rule, **inputs))
    if as_json:
        typer.echo(json.dumps(result, default=str))
        return
    for key, value in result.items():
        if key != "notes":
            typer.echo(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    for note in result.get("notes", []):
        typer.echo(f"note: {note}")


def _print_prediction(result: Any, path: str) -> None:
    """A :class:`~proxytune.analysis.prediction.Prediction` in words; writes the training code next to ``path``."""
    from rich.console import Console

    from .analysis.predict import BASE_LR_MEANING

    console = Console()
    console.soft_wrap = not console.is_terminal  # a file or a pipe keeps whole lines
    t, h, r, px = result.target, result.hp, result.recipe, result.proxies
    tokens_text = f"{t.tokens:.3g} tokens" if t.tokens is not None else "tokens not reported"
    console.print(f"[bold]target[/bold] width {t.width} depth {t.depth} ({t.params / 1e6:.2f} M params), "
                  f"{tokens_text}; recipe {r.recipe} + {r.optimizer}, from sweep {r.sweep} "
                  f"(widths {', '.join(map(str, px.widths))}, {px.seeds} seed{'s' if px.seeds > 1 else ''})")
    pct = f"{100 * h.confidence:.0f}%"
    if h.lr is not None:
        console.print(f"lr for plan.optimizer(lr=...) of the target's plan: {h.lr:.4g} ({pct} "
                      f"{h.lr_interval[0]:.3g} .. {h.lr_interval[1]:.3g}), {h.name} {h.value:.2f} "
                      f"({h.interval[0]:.2f} .. {h.interval[1]:.2f})")
        console.print(f"  from {h.source}" if h.source else "  from the sweep's optima", markup=False)
        console.print(f"  (a base LR is {BASE_LR_MEANING})")
    else:
        console.print(f"{h.name}: {h.value:.2f} ({pct} {h.interval[0]:.2f} .. {h.interval[1]:.2f})")
        console.print(f"  from {h.source}", markup=False)
    loss = result.loss
    if loss:
        at = f"after {loss.at_tokens:.3g} tokens" if loss.at_tokens is not None else "at the proxies' budget"
        console.print(f"expected loss {at}: {loss.value:.4f} ({pct} "
                      f"{loss.interval[0]:.4f} .. {loss.interval[1]:.4f}); {loss.law}")
    for warning in result.warnings:
        console.print(f"[bold yellow]trust:[/bold yellow] {warning}")
    for note in result.notes:
        console.print(f"note: {note}")
    if result.snippet is None:  # a program sweep: the notes say where the plans are
        return
    code = Path(path).with_name(f"train-width{t.width}-depth{t.depth}.py")
    code.write_text(result.snippet)
    console.print(f"per-tensor plan: {path}")
    lr_text = f", lr = {h.lr!r}, the value above" if h.lr is not None else ""
    console.print(f"training code (the tuned optimizer, groups, schedule and warmup{lr_text}; add your data): {code}")


@app.command()
def rules() -> None:
    """The rules of thumb `predict --rule` knows: formula, source, domain of validity."""
    from .analysis.rules_of_thumb import explain_rules

    typer.echo(explain_rules())


@app.command()
def report(
    run_dir: str = typer.Argument(..., help="the sweep's directory"),
    out: Optional[str] = typer.Option(None, help="output directory [RUN_DIR/report]"),
    hp: str = typer.Option("log2_lr", help="the HP axis"),
    size_axis: str = typer.Option("width", help="the axis along which transfer is judged"),
) -> None:
    """Markdown report with figures: loss vs log2 LR per size, optimum vs size, loss vs size, verdict."""
    from .analysis.report import write_sweep_report
    from .sweep import Sweep

    sw = _sweep_errors(lambda: Sweep.open(run_dir))
    path = _sweep_errors(lambda: write_sweep_report(sw, Path(out or Path(run_dir) / "report"), hp, size_axis))
    typer.echo(str(path))


@app.command()
def tune(
    config: str = typer.Argument(..., help="tune YAML file (see proxytune.tune.config)"),
    workers: Optional[int] = typer.Option(None, help="worker processes (overrides executor.workers)"),
    threads: Optional[int] = typer.Option(None, help="torch threads per worker"),
    batch: Optional[int] = typer.Option(None, help="trials trained together per worker (1 = off)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Find the settings for the big model: constants and LR tuned at the base, verified on wider proxies, the
    best recipe recommended, with the base LR and loss predicted for the target, the plan, the cost and a report.
    Running it again continues a stopped run."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .tune import TuneConfig
    from .tune import tune as run_tune

    def load() -> Any:
        cfg = TuneConfig.from_yaml(config)
        changes = {k: v for k, v in dict(workers=workers, threads=threads, batch=batch).items() if v is not None}
        if changes:
            cfg = cfg.model_copy(update={"executor": cfg.executor.model_copy(update=changes)})
        return cfg

    cfg = _sweep_errors(load)
    console = Console(stderr=as_json)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("trials"),
                        TimeElapsedColumn(), console=console, transient=True)
    task = progress.add_task("tune", total=None)
    # Off a terminal (a log file, a pipe) the bar prints nothing: plain progress lines instead.
    from .progress import PlainProgress

    if not console.is_terminal:
        console.soft_wrap = True  # a log file keeps whole lines (paths, numbers), not lines cut at 80 columns
    plain = None if console.is_terminal else PlainProgress(
        lambda line: console.print(line, markup=False, highlight=False))

    def on_poll(stage: str, counts: dict[str, int]) -> None:
        if plain is not None:
            plain.poll(stage.split(":")[0], counts)
            return
        done = counts["complete"] + counts["diverged"] + counts["failed"] + counts["pruned"]
        progress.update(task, total=done + counts["running"] + counts["waiting"], completed=done,
                        description=stage.split(":")[0])

    console.print(f"[bold]proxytune tune[/bold] {cfg.name}: base {cfg.base_width} x {cfg.base_depth}, proxies "
                  f"{', '.join(map(str, cfg.proxy_widths))}, candidates {', '.join(cfg.candidates)} -> {cfg.run_dir}/")

    def run() -> Any:
        try:
            result = run_tune(cfg, log=plain.log if plain is not None else progress.console.print, on_poll=on_poll)
        except BaseException:
            if plain is not None:
                plain.close("stopped")  # the last stage's counts, before the error line
            raise
        if plain is not None:
            plain.close()
        return result

    try:
        with _stop_signals():
            if plain is not None:
                result = _sweep_errors(run)
            else:
                with progress:
                    result = _sweep_errors(run)
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: finished trials are kept, running ones given back
        raise _stopped(console, exc, f"proxytune tune {config}") from None
    if as_json:
        from .tune.run import _json_default

        typer.echo(json.dumps(result.to_dict(), default=_json_default))
        return
    _print_tune(console, result)


def _print_tune(console: Any, result: Any) -> None:
    """A :class:`~proxytune.tune.results.TuneResult` in words."""
    from .analysis.predict import BASE_LR_MEANING
    from .tune.report import base_gain_line, horizon_cost_line, lr_line, setting_lines

    console.print(f"\n[bold]Recommended[/bold]: recipe [bold]{result.recipe}[/bold], multipliers "
                  + (", ".join(f"{k}={v}" for k, v in result.constants.items()) or "all 1"))
    console.print(f"  {lr_line(result)}", markup=False)
    console.print(f"  (a base LR is {BASE_LR_MEANING})")
    for note in result.notes:
        console.print(f"  note: {note}", markup=False)
    for line in result.recommendation[1:]:
        console.print(f"  {line}")
    console.print(f"  {base_gain_line(result.stage1)}")
    for cand in result.candidates:
        if cand.verdict:
            console.print(f"  [bold]{cand.recipe}[/bold]: {cand.verdict.line}")
    p = result.prediction
    if p:
        tokens = f"{p.tokens:.3g} tokens" if p.tokens is not None else "tokens not reported"
        console.print(f"\n[bold]Target[/bold] width {p.width} x depth {p.depth} ({p.params / 1e6:.1f} M params, "
                      f"{tokens}): trains with the lr above"
                      + (f", expected loss {p.loss.value:.4f} (90% {p.loss.interval[0]:.4f} .. "
                         f"{p.loss.interval[1]:.4f})" if p.loss else ""))
        for line in setting_lines(p):
            console.print(f"  {line}", markup=False)
        for warning in p.warnings:
            console.print(f"  [bold yellow]trust:[/bold yellow] {warning}")
        if p.plan:
            console.print(f"  plan: {p.plan}  training code: {p.snippet} (it sets lr = {p.lr!r})")
    c = result.cost
    line = f"\n[bold]Cost[/bold]: {c.trials} proxy trials, " + (
        f"{c.flops:.3g} FLOPs" if c.flops else "FLOPs not reported (a program can: trial.set(flops=...))")
    if c.vs_lr_sweep_at_largest is not None:
        line += f"; {c.vs_lr_sweep_at_largest:.2f}x an LR sweep at width {c.largest_width}"
    if c.vs_target_run is not None:
        line += f"; {c.vs_target_run:.2%} of one target run"
    console.print(line)
    stage3 = horizon_cost_line(result)
    if stage3:
        console.print(f"  of which {stage3}")
    console.print(f"report: {result.report}")


@app.command()
def demo(
    out: str = typer.Option("proxytune-demo", help="output directory (sweeps, report, figures)"),
    quick: bool = typer.Option(False, "--quick", help="the short preset: 3 widths, 9 learning rates, 2 seeds, "
                               "60 steps"),
    gpu: bool = typer.Option(False, "--gpu", help="the larger GPU preset (default when CUDA is available)"),
    cpu: bool = typer.Option(False, "--cpu", help="force the CPU preset even when a GPU is present"),
    workers: int = typer.Option(2, min=0, help="worker processes on CPU (0: train in this process)"),
) -> None:
    """SP vs muP width sweeps on the built-in corpus, then verdict, prediction for a 4x wider target, report."""
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from .demo import EXPLAIN, RECIPES, demo_tune_config, preset_trials, run_demo, tune_trials

    preset = "quick" if quick else ("gpu" if gpu or (torch.cuda.is_available() and not cpu) else "cpu")
    console = Console()
    console.print(f"[bold]proxytune demo[/bold] ({preset} preset) -> {out}/")
    planned = {r: preset_trials(preset, r) for r in RECIPES}
    planned["tune"] = _sweep_errors(lambda: tune_trials(demo_tune_config(Path(out), preset, workers)))
    done_by: dict[str, int] = {r: 0 for r in planned}
    labels = {**RECIPES, "tune": "tune"}
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("trials"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=console)
    task = progress.add_task("SP + muP sweeps, tune", total=sum(planned.values()))
    tune_done: dict[str, int] = {}  # the tune run is many sweeps: trials finished in each

    def on_poll(recipe: str, counts: dict[str, int]) -> None:
        done = counts["complete"] + counts["diverged"] + counts["failed"] + counts["pruned"]
        if recipe.startswith("tune:"):
            tune_done[recipe] = done
            done_by["tune"] = sum(tune_done.values())
            planned["tune"] = max(planned["tune"], done_by["tune"] + counts["running"] + counts["waiting"])
            description = "tune: " + recipe.split("·")[-1].split(":")[0].strip()
        else:
            planned[recipe] = max(planned[recipe], done + counts["running"] + counts["waiting"])  # + refinement
            done_by[recipe] = done
            description = f"{labels[recipe]} sweep"
        progress.update(task, total=sum(planned.values()), completed=sum(done_by.values()), description=description)

    with progress:
        summary = _sweep_errors(lambda: run_demo(out, preset, workers, log=progress.console.print,
                                                 on_poll=on_poll))
    console.print(f"\n[bold]What it shows[/bold] ({summary['seeds']} seeds per point, "
                  f"{summary['tokens_per_trial']:,} tokens per trial):")
    for line in summary["story"]:
        console.print(f"  {line}")
    console.print("\n[bold]Verdicts[/bold]")
    for key in ("octave", "drift", "regret", "wider", "interval"):
        console.print(f"  [dim]{EXPLAIN[key]}[/dim]")
    for recipe, line in summary["verdicts"].items():
        console.print(f"  [bold]{RECIPES[recipe]}[/bold]: {line}")
    pred = summary["prediction"]
    loss = pred["loss"]
    t = summary["tune"]
    console.print(f"\n[bold]Recommended[/bold] (proxytune tune): {t['recipe']}, constants "
                  + (", ".join(f"{k}={v}" for k, v in t["constants"].items()) or "all 1")
                  + f"; tuning cost {t['cost']['flops']:.3g} FLOPs"
                  + (f" ({t['cost']['vs_lr_sweep_at_largest']:.2f}x an LR sweep at the largest proxy)"
                     if "vs_lr_sweep_at_largest" in t["cost"] else ""))
    for line in t["recommendation"][1:]:
        console.print(f"  {line}")
    console.print(f"\n[bold]The target run[/bold] with {pred['recipe']}: width {pred['target_width']} "
                  f"({pred['target_params'] / 1e6:.2f} M params), {pred['tokens']:,.0f} tokens"
                  + (f", expected loss {loss['value']:.3f} nats/byte (90% {loss['interval'][0]:.3f} .. "
                     f"{loss['interval'][1]:.3f})" if loss else "")
                  + "; its settings (the lr is the one for plan.optimizer(lr=...) of the target's plan):")
    for line in pred.get("setting_lines", []):
        console.print(f"  {line}", markup=False)
    for warning in pred["warnings"]:
        console.print(f"  [bold yellow]trust:[/bold yellow] {warning}")
    console.print(f"\nruns: {', '.join(summary['runs'].values())}")
    console.print(f"report: {out}/report.md (figures, optima, verdicts, target plan); training code: "
                  f"{pred['snippet']}")
    console.print("\n[bold]Next[/bold]")
    for cmd in summary["next"]:
        console.print(f"  {cmd}", soft_wrap=True, highlight=False, markup=False)


# ------------------------------------------------------------- diagnostics
def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PlanError(f"{what} must be comma-separated integers, got {text!r}") from None


@app.command("coord-check")
def coord_check_cmd(
    model: str = typer.Option("gpt", help=_MODEL_HELP),
    widths: Optional[str] = typer.Option(None, help="comma-separated widths, e.g. 64,128,256,512"),
    depths: Optional[str] = typer.Option(None, help="comma-separated depths, e.g. 2,4,8,16"),
    width: int = typer.Option(64, help="fixed width for a depth sweep"),
    depth: int = typer.Option(2, help="fixed depth for a width sweep"),
    recipe: str = typer.Option("mup", help=f"one of: {', '.join(RECIPES)}"),
    optimizer: str = typer.Option("adamw", help=f"one of: {', '.join(OPTIMIZERS)}"),
    lr: float = typer.Option(THRESHOLDS.coord_lr, help="base learning rate"),
    steps: int = typer.Option(3, help="optimizer steps"),
    seeds: int = typer.Option(THRESHOLDS.coord_seeds, help="seeds per size"),
    data: str = typer.Option("stdlib", help="corpus: stdlib or a text file"),
    option: list[str] = typer.Option([], help="builder option key=value (repeatable)"),
    figure: Optional[str] = typer.Option("coord_check.png", help="PNG path for the figure ('' for none)"),
    as_json: bool = typer.Option(False, "--json", help="print the tidy records and slopes as JSON"),
    role: list[str] = _ROLE, block_pattern: Optional[str] = _BLOCK_PATTERN, branch_output: list[str] = _BRANCH,
    attention: list[str] = _ATTENTION, targets_arg: Optional[str] = _TARGETS_ARG, output: Optional[str] = _OUTPUT,
    input_kind: Optional[str] = _INPUT, readout: Optional[str] = _READOUT,
) -> None:
    """Coordinate check across widths or depths: verdict, slope table, figure (one panel per step). The logits,
    every attention's logits and the residual branches are measured besides the modules."""
    from .diagnose import coord_check

    result = _sweep_errors(lambda: coord_check(
        _model_spec(model, option, role, block_pattern, branch_output, attention, targets_arg, output, input_kind,
                    readout),
        widths=_int_list(widths, "--widths"), depths=_int_list(depths, "--depths"), width=width,
        depth=depth, recipe=recipe, optimizer=optimizer, lr=lr, steps=steps, seeds=seeds, data=data))
    if as_json:
        typer.echo(json.dumps({"passed": result.passed, "line": result.line, "slopes": result.slopes,
                               "records": result.to_records()}, default=str))
    else:
        typer.echo(result.table())  # ends with the verdict line
    if figure:
        result.figure(figure)
        if not as_json:
            typer.echo(f"figure: {figure}")
    raise typer.Exit(0 if result.passed else 1)


@app.command("unit-check")
def unit_check_cmd(
    model: str = typer.Option("gpt", help=_MODEL_HELP),
    width: int = typer.Option(64, help="model width"),
    depth: int = typer.Option(2, help="model depth"),
    base_width: Optional[int] = typer.Option(None, help="base width of the plan (default: the model's width)"),
    base_depth: Optional[int] = typer.Option(None, help="base depth of the plan (default: the model's depth)"),
    recipe: str = typer.Option("mup", help=f"one of: {', '.join(RECIPES)}"),
    optimizer: str = typer.Option("adamw", help=f"one of: {', '.join(OPTIMIZERS)}"),
    lr: float = typer.Option(THRESHOLDS.coord_lr, help="base learning rate of the steps"),
    steps: int = typer.Option(3, help="optimizer steps before the second measurement (0: init only)"),
    batch_size: int = typer.Option(8, help="batch size"),
    seq_len: int = typer.Option(32, help="sequence length"),
    data: str = typer.Option("stdlib", help="stdlib, a text file or a .bin token file"),
    option: list[str] = typer.Option([], help="builder option key=value (repeatable)"),
    low: float = typer.Option(0.25, help="lower end of the unit-scale band"),
    high: float = typer.Option(4.0, help="upper end of the unit-scale band"),
    as_json: bool = typer.Option(False, "--json", help="print every measured RMS as JSON"),
    role: list[str] = _ROLE, block_pattern: Optional[str] = _BLOCK_PATTERN, branch_output: list[str] = _BRANCH,
    attention: list[str] = _ATTENTION, targets_arg: Optional[str] = _TARGETS_ARG, output: Optional[str] = _OUTPUT,
    input_kind: Optional[str] = _INPUT, readout: Optional[str] = _READOUT,
) -> None:
    """Unit-scale check: RMS of every weight, activation and gradient at init and after a few steps, and
    which fall outside [low, high] (what bf16/fp8 training needs; see docs/diagnostics.md section 7)."""
    from .diagnose import unit_scale_check
    from .train import TrainConfig
    from .train.setup import optimizer_kwargs, prepare

    def run() -> Any:
        spec = _model_spec(model, option, role, block_pattern, branch_output, attention, targets_arg, output,
                           input_kind, readout)
        cfg = TrainConfig(model=spec.model_dump(), width=width, depth=depth, base_width=base_width or width,
                          base_depth=base_depth or depth, recipe=recipe, optimizer=optimizer, data=data,
                          lr=lr, steps=max(steps, 1), batch_size=batch_size, seq_len=seq_len)
        prep = prepare(cfg)
        opt = prep.plan.optimizer(cfg.lr, cfg.weight_decay, model=prep.model, **cfg.group_kwargs(),
                                  **optimizer_kwargs(cfg))
        gen = torch.Generator().manual_seed(cfg.seed)

        def batch() -> tuple[torch.Tensor, torch.Tensor]:
            x, y = prep.data.sample("train", batch_size, seq_len, gen)
            return x.to(prep.device), y.to(prep.device)

        return unit_scale_check(prep.model, batch, loss_fn=lambda out, y: prep.loss_fn(prep.forward.logits(out), y),
                                optimizer=opt, steps=steps, low=low, high=high)

    result = _sweep_errors(run)
    if as_json:
        typer.echo(json.dumps({"passed": result.passed, "low": low, "high": high, "records": result.records}))
    else:
        typer.echo(result.summary())
    raise typer.Exit(0 if result.passed else 1)


@app.command()
def check(
    model: str = typer.Option("gpt", help=_MODEL_HELP),
    data: str = typer.Option("stdlib", help="stdlib, a text file or a .bin token file"),
    recipe: str = typer.Option("mup", help=f"one of: {', '.join(RECIPES)}"),
    optimizer: str = typer.Option("adamw", help=f"one of: {', '.join(OPTIMIZERS)}"),
    widths: str = typer.Option("32,64,128", help="3 or more comma-separated proxy widths"),
    depth: int = typer.Option(2, help="proxy depth"),
    option: list[str] = typer.Option([], help="builder option key=value (repeatable)"),
    data_option: list[str] = typer.Option([], help="data option key=value, e.g. vocab_size=50304"),
    role: list[str] = _ROLE, block_pattern: Optional[str] = _BLOCK_PATTERN, branch_output: list[str] = _BRANCH,
    attention: list[str] = _ATTENTION, targets_arg: Optional[str] = _TARGETS_ARG, output: Optional[str] = _OUTPUT,
    input_kind: Optional[str] = _INPUT, readout: Optional[str] = _READOUT,
) -> None:
    """The quick verdict: coordinate check + alignment + a mini LR sweep at 3 widths -> transfers or why not."""
    from .diagnose.check import quick_check

    result = _sweep_errors(lambda: quick_check(
        _model_spec(model, option, role, block_pattern, branch_output, attention, targets_arg, output, input_kind,
                    readout),
        widths=tuple(_int_list(widths, "--widths") or ()), depth=depth, recipe=recipe, optimizer=optimizer,
        data=data, data_options=_parse_options(data_option),
        log=lambda line: typer.echo(f"check: {line}", err=True)))  # one line per phase, on a terminal or not
    typer.echo(result.report())
    raise typer.Exit(2 if result.sweep_error else 0 if result.transfers else 1)  # 2: no verdict, an error


@app.command()
def recipes() -> None:
    """List the recipes and optimizers with their sources."""
    for r in RECIPES.values():
        typer.echo(f"{r.name:<12} {r.summary}  [{r.source}]")
    typer.echo("")
    for o in OPTIMIZERS.values():
        typer.echo(f"{o.name:<12} {o.summary}")


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None,  # noqa: ANN001
                  line: str | None = None) -> None:
    """Warnings as one plain line each ("warning: ..."), not Python's file-and-line form."""
    print(f"warning: {message}", file=file or sys.stderr)


def main() -> None:
    warnings.showwarning = _show_warning
    app(prog_name="proxytune")


if __name__ == "__main__":
    sys.exit(main())
