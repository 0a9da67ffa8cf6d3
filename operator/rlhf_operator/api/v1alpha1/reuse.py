"""Reuse of finished work: a precompute stage whose inputs hash to an earlier job's finished result
on the same storage takes that result instead of generating again."""

from __future__ import annotations

from enum import StrEnum


class ReusePolicy(StrEnum):
    IF_AVAILABLE = "IfAvailable"
    NEVER = "Never"
