"""Poison generation: the MI-UE min-min engine and its error-minimizing-noise baseline."""

from miue_ext.generate.config import METHODS, MODES, OBJECTIVES, GenerationConfig
from miue_ext.generate.engine import GenerationResult, generate

__all__ = ["GenerationConfig", "GenerationResult", "generate", "METHODS", "MODES", "OBJECTIVES"]
