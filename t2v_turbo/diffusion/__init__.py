"""The diffusion math shared by samplers, trainers and exports: noise schedules, solver steps,
consistency boundary conditions. Small pure tensor functions (no I/O, no globals, no ranks)."""
