"""The ``diskci`` command line: typer app, one module per command group; thin adapters only."""
