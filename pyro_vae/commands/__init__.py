"""One module per ``pyro-vae`` subcommand: ``add_arguments(parser)`` and ``run(args)``."""
