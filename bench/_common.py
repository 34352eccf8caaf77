"""Helpers shared by the benchmark scripts: machine description and BENCHMARKS.md sections."""

from __future__ import annotations

import datetime
import os
import platform
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def machine(device: str, threads: int) -> str:
    """One line naming the hardware a figure was measured on."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} ({os.cpu_count()} CPU cores)"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), {threads} torch thread{'s' if threads != 1 else ''} per process"


def provenance(script: str, device: str, threads: int) -> str:
    """'Command: ...; machine: ...; torch ...; date: ...' for the top of a section."""
    cmd = f"python bench/{script} " + " ".join(sys.argv[1:])
    return (f"Command: `{cmd.strip()}`; machine: {machine(device, threads)}; torch {torch.__version__}; "
            f"date: {datetime.date.today().isoformat()}.")


def run_sweep(d: dict) -> list[dict]:
    """Run (or resume) the sweep of dict ``d``, print its wall time, return its records."""
    import time

    from proxytune.sweep import Sweep, SweepConfig

    sweep = Sweep(SweepConfig.from_dict(d))
    t = time.perf_counter()
    sweep.run()
    print(f"{d['name']}: {time.perf_counter() - t:.0f} s", flush=True)
    return sweep.records()


def emit(lines: list[str], title: str, write: bool) -> str:
    """Print a section's lines and (``write``) put them into BENCHMARKS.md under ``## title``."""
    text = "\n".join(lines)
    print(text)
    if write:
        write_section(ROOT / "BENCHMARKS.md", title, text)
    return text


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the section ``## title`` of BENCHMARKS.md."""
    old = path.read_text() if path.exists() else "# proxytune benchmarks\n"
    section = f"## {title}\n\n{body}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: section + "\n", old) if pattern.search(old) else old.rstrip() + "\n\n" + section
    path.write_text(new)


def close_section(lines: list[str], optima: dict[str, list], labels: dict[str, str], size_axis: str, fig_name: str,
                  caption: str, title: str, preset: str, write: bool) -> str:
    """Append the LR-curve figure and the optima's notes to ``lines``, print the section and (``write``) put it
    into BENCHMARKS.md as ``title (CPU)`` or ``title (GPU)``."""
    from proxytune.analysis.report import lr_curves_figure

    fig = ROOT / "bench" / f"{fig_name}_{preset}.png"
    lr_curves_figure({labels[r]: ops for r, ops in optima.items()}, fig, size_axis=size_axis)
    lines = lines + ["", f"![{caption}](bench/{fig.name})"]
    notes = [f"{labels[r]} {size_axis} {o.group[size_axis]}: {n}" for r, ops in optima.items() for o in ops
             for n in o.notes]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    text = "\n".join(lines)
    print(text)
    if write:
        write_section(ROOT / "BENCHMARKS.md", title + (" (GPU)" if preset == "gpu" else " (CPU)"), text)
    return text


def optima_cell(ops: list, size_axis: str) -> str:
    """'size: optimum (90% interval)' per size, ``*`` marking an optimum on the grid edge."""
    return ", ".join(f"{o.group[size_axis]}: {o.value:.2f} ({o.interval[0]:.2f}..{o.interval[1]:.2f})"
                     + ("*" if o.edge else "") for o in ops)
