"""t2v-turbo core: teacher adapters, student, samplers, pipeline, export, config and CLI."""
