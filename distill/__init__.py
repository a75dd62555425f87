"""Consistency distillation: solver, boundary conditions, losses, trainer and data."""
