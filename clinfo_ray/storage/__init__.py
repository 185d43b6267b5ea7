"""Where data are read and written: a local path or a filesystem URI (``s3://``, ``gs://``, any
pyarrow filesystem), through one module (:mod:`clinfo_ray.storage.location`); the checks a
command runs on its locations before Ray starts are in :mod:`clinfo_ray.storage.checks`."""
