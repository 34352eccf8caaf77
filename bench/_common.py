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


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the section ``## title`` of BENCHMARKS.md."""
    old = path.read_text() if path.exists() else "# proxytune benchmarks\n"
    section = f"## {title}\n\n{body}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: section + "\n", old) if pattern.search(old) else old.rstrip() + "\n\n" + section
    path.write_text(new)
