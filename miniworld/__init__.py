"""The mini world: a procedural text-video world small enough to train every model of the recipe
on 2 CPU cores, its ground-truth benchmark (MiniBench), its shipped assets and the commands that
build them. An application on top of the library: it uses ``t2v_turbo`` (core), ``distill``,
``rewards`` and ``eval``; none of them imports it (its rewards join the registry through the
``t2v_turbo.rewards`` entry point)."""
