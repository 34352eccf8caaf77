"""The optimal HP of each size: the estimator of :mod:`proxytune.optimum_fit` (see its docstring).

It lives below ``sweep/`` and ``analysis/`` both, since a grid sweep's refinement pass needs it and ``sweep/``
may not import ``analysis/``.
"""

from __future__ import annotations

# re-exported for one release; import from proxytune.optimum_fit
from ..optimum_fit import (  # noqa: F401
    SEED_AXES,
    RECORD_META,
    Curve,
    Optimum,
    Parabola,
    _bootstrap,
    _coarse_step,
    _estimate,
    _Estimate,
    _interpolate,
    _level_se,
    _row_means,
    _sort_key,
    _two_way_fit,
    find_optimum,
    group_axes,
    optima_by_group,
)
