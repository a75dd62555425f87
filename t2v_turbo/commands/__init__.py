"""Subcommands of the t2v-turbo CLI: each module defines add_arguments(parser) and run(args)."""
