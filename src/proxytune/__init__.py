"""proxytune: tune hyperparameters on small proxies, train the big model once.

>>> import proxytune as pt
>>> plan = pt.parameterize(target, base=base, recipe="mup", optimizer="adamw")
>>> opt = plan.optimizer(lr=3e-3, weight_decay=0.1)
>>> print(plan.explain())
"""

from .plan import Plan, TensorPlan, parameterize
from .rules.multipliers import Multipliers
from .rules.recipes import OPTIMIZERS, RECIPES, WD_POLICIES
from .shapes import PlanError
from .sweep import Sweep, SweepConfig, Trial, TrialPruned
from .train import RunResult, TrainConfig, train, train_batched
from .tune import TuneConfig, TuneResult, tune

from .version import __version__

__all__ = ["Plan", "TensorPlan", "parameterize", "Multipliers", "PlanError", "RECIPES", "OPTIMIZERS", "WD_POLICIES",
           "TrainConfig", "RunResult", "train", "train_batched", "Sweep", "SweepConfig", "Trial", "TrialPruned", "tune", "TuneConfig", "TuneResult", "__version__"]
