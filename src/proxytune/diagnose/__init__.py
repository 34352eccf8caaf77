"""Diagnostics: measure whether a parameterization behaves as planned, before spending the compute."""

from .alignment import AlignmentCheck, alignment_check
from .coord import CoordCheck, coord_check
from .eps import EpsCheck, eps_check
from .spectral import SpectralCheck, spectral_check
from .unit_scale import UnitScaleCheck, unit_scale_check

__all__ = ["CoordCheck", "coord_check", "SpectralCheck", "spectral_check", "AlignmentCheck", "alignment_check",
           "EpsCheck", "eps_check", "UnitScaleCheck", "unit_scale_check"]
