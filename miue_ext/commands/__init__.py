"""Subcommands of the `miue` CLI, one module each (see miue_ext/cli.py)."""
