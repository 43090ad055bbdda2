"""The commands layer: one module per `medsft` command. A command parses its arguments (commands/arguments.py),
checks its inputs before any heavy import, calls the domain, and is the only layer that prints or exits. Each
module's `run(args) -> int` is the command; `medsft/cli.py` is the table that maps names to them."""
