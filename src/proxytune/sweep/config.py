"""The sweep file (``sweep.yaml``) under its long-standing import path: its schema, its helpers, its strategies.

The schemas live at the bottom of the package in :mod:`.schema`, the pure helpers they validate with in
:mod:`.fields`, the error in :mod:`.errors` and the strategy kinds in :mod:`.strategy`. Importing this module
(as ``import proxytune.sweep`` does) registers the strategies, so a config read through it checks its
``strategy.kind`` against them.
"""

from __future__ import annotations

# re-exported for one release; import from proxytune.sweep.errors
from .errors import SweepConfigError  # noqa: F401
# re-exported for one release; import from proxytune.sweep.fields
from .fields import (  # noqa: F401
    _OWNED,
    _LOG2_FIELDS,
    DATA_NAMES,
    _binary_keys,
    _format,
    _unknown,
    absolute_data,
    absolute_storage,
    apply_point,
    axis_values_of,
    base_config,
    base_fields,
    check_base,
    check_program_leaves_model,
    check_train,
    data_relative_to,
    field_name,
    first_point,
    program_absolute,
    program_identity,
    program_relative_to,
    structure_identity,
)
# re-exported for one release; import from proxytune.sweep.schema
from .schema import (  # noqa: F401
    COMMAND_FIELDS,
    EXECUTORS,
    MAX_AXIS_POINTS,
    MAX_AXIS_VALUE,
    MAX_GRID_POINTS,
    MAX_LOG2,
    ExecutorConfig,
    FileConfig,
    ProgramConfig,
    Range,
    StrategyConfig,
    SweepConfig,
    TrackingConfig,
)
# The strategy registry (kind -> Strategy; iterating gives the kind names, in order). Importing it here also
# registers every strategy before a sweep file is read.
from .strategy import STRATEGIES  # noqa: F401
