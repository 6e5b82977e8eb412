"""Moved to model/registry.py (serving reads the registry; training only adds versions).

Kept so `from training.registry import Registry` goes on working.
"""

from model.registry import POINTER, Registry, RegistryEntry, RegistryError, UnknownVersionError

__all__ = ["POINTER", "Registry", "RegistryEntry", "RegistryError", "UnknownVersionError"]
