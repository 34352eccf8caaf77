"""A training *script*, swept by proxytune through ``program: {command: [...]}``.

It runs on its own (``python train_script.py --width 64 --lr 0.004``) and,
when a sweep starts it, ``proxytune.Trial.current()`` connects it to the
sweep: the same loop reports its curve and its final loss to the store. The
command line gets its values from placeholders in the sweep file
(``--lr {lr}``); the trial object carries them too (``trial.params``).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mytrain import train  # noqa: E402 - the same loop as the function example

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2 ** -8)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    trial = None
    if "PROXYTUNE_TRIAL" in os.environ:  # started by a sweep
        import proxytune as pt

        trial = pt.Trial.current()
    loss = train(args.width, args.depth, args.lr, steps=args.steps, seed=args.seed, trial=trial)
    if trial is not None:
        trial.finish(loss)
    print(f"final validation loss {loss:.4f}")
