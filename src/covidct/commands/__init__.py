"""Subcommand groups of ``covidct`` (``covidct.cli`` registers them)."""
