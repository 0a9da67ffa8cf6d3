"""Helpers shared by the tests (never imported by production code): builders, merge, ports, launchers."""
