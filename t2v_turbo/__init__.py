"""t2v-turbo core: teacher adapters, student, samplers, pipeline, export, config and CLI."""

__version__ = "0.1.0"
