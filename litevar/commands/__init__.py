"""The `litevar` command line: one module per command (add_arguments(parser), run(args) -> int),
wired up in litevar/commands/cli.py. The top floor: it may import every other part."""
