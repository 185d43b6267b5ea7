"""Ray Tune searches over the training config (``clinfo-ray tune``).

``space``: a search space file (dotted config keys and how to draw them), checked against the
typed config before Ray starts. ``trial``: what one trial runs on Ray (a whole multi-worker
training run, its clusters shared through a cache). ``search``: the Tuner (ASHA on the online
kNN of the validation split, concurrency from the cluster's resources, resume). ``report``: the
trials' table, ``best.yaml`` and the plot. Only ``clinfo_ray.commands.tune`` imports this unit.
"""
