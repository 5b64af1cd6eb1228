"""The library's errors: one base class, one subclass per area.

Every error a user can cause (a bad file, a bad option, missing data) is a :class:`DistreeError`
whose message is one line naming the file, the section and key, and the fix; the command line
prints it as it is and exits with code 2. The subclasses keep the built-in base classes callers
caught before (``ValueError`` for validation, ``RuntimeError`` for files that are corrupt or do
not match), so ``except ValueError`` and ``except RuntimeError`` go on working.

This module imports nothing beyond the standard library.
"""

from __future__ import annotations


class DistreeError(Exception):
    """Base class of every error distree raises on purpose."""


class SpecError(DistreeError, ValueError):
    """A cluster spec (TOML) is missing, malformed or inconsistent."""


class ScenarioError(DistreeError, ValueError):
    """A simulator scenario (TOML) is missing or invalid."""


class ProfileError(ScenarioError):
    """A device profile (``distree profile-device`` JSON) is missing or invalid.

    A subclass of :class:`ScenarioError`: a scenario reads its device profile while it loads.
    """


class PolicyError(DistreeError, ValueError):
    """A policy file is missing or invalid, or a policy parameter is unknown or out of range."""


class ConfigError(DistreeError, ValueError):
    """A training configuration is invalid."""


class CheckpointError(DistreeError, RuntimeError):
    """A checkpoint is missing, corrupt, or does not match its description."""


class TraceError(DistreeError, RuntimeError):
    """A trace file is missing, corrupt or inconsistent."""


class DatasetError(DistreeError, RuntimeError):
    """A dataset is missing or its files are corrupt."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "DistreeError",
    "PolicyError",
    "ProfileError",
    "ScenarioError",
    "SpecError",
    "TraceError",
]


class ModelError(DistreeError, ValueError):
    """A model cannot be found, imported or built with the given arguments; the message says the fix."""
