"""From trials to answers: optima, transfer verdict, laws, rules of thumb, prediction, report."""

from .laws import fit_chinchilla, fit_log2_hp, fit_log_linear, fit_power_law, fit_saturating_power_law
from .optimum import Optimum, find_optimum, optima_by_group
from .rules_of_thumb import RULES, apply_rule
from .verdict import Verdict, transfer_verdict

__all__ = ["Optimum", "find_optimum", "optima_by_group", "Verdict", "transfer_verdict", "fit_power_law",
           "fit_log2_hp", "fit_log_linear", "fit_saturating_power_law", "fit_chinchilla", "RULES", "apply_rule"]
