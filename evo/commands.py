"""Sub-commands of `evo` that drive evolution runs (run, resume, status, show, export)."""


def add_run_commands(sub) -> None:
    """Registered by the evolution package; empty until it lands."""
