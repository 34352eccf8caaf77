"""The ``proxytune`` command line."""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import torch
import typer

from .builders import build_model, load_builder
from .plan import parameterize
from .rules.recipes import OPTIMIZERS, RECIPES, WD_POLICIES
from .shapes import PlanError

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


@app.command()
def explain(
    model: str = typer.Option("gpt", help="built-in name (gpt, mlp) or pkg.module:build_fn"),
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
    save: Optional[str] = typer.Option(None, help="write the plan as JSON to this path"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON instead of a table"),
    seed: int = typer.Option(0, help="seed for building the base"),
) -> None:
    """Print the per-tensor plan (role, multipliers, init std, lr, wd, eps) for a target/base pair."""
    try:
        fn = load_builder(model)
        opts = _parse_options(option)
        torch.manual_seed(seed)
        base = build_model(fn, base_width, base_depth, "cpu", opts)  # small: exact init statistics
        target = build_model(fn, width, depth, "meta", opts)  # any size, free
        plan = parameterize(target, base, recipe=recipe, optimizer=optimizer, mode=mode,
                            alignment=alignment, weight_decay=weight_decay_policy)
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


@app.command()
def recipes() -> None:
    """List the recipes and optimizers with their sources."""
    for r in RECIPES.values():
        typer.echo(f"{r.name:<12} {r.summary}  [{r.source}]")
    typer.echo("")
    for o in OPTIMIZERS.values():
        typer.echo(f"{o.name:<12} {o.summary}")


def main() -> None:
    app(prog_name="proxytune")


if __name__ == "__main__":
    sys.exit(main())
