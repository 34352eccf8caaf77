"""``proxytune tune``: per-role constants and LR found at the base, verified on wider proxies, one recipe
recommended, with the target's predicted settings, loss and the tuning cost."""

from .config import DEFAULT_MULTIPLIERS, SearchConfig, TargetConfig, TuneConfig, TuneConfigError, VerifyConfig
from .run import TuneResult, Tuner, tune

__all__ = ["tune", "Tuner", "TuneResult", "TuneConfig", "TuneConfigError", "SearchConfig", "VerifyConfig",
           "TargetConfig", "DEFAULT_MULTIPLIERS"]
