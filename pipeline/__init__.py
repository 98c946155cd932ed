"""The data plane of derain-archive, runnable without Prefect, in rooms: ``io`` (storage, video,
overlap), ``stage`` (the de-rain stage and its config), ``job`` (plan, run, manifests, report),
``runtime`` (runners; the only folder that imports ray), ``registry`` (models, checkpoints,
training content), ``tools`` (evaluation, bench, demo) and ``cli`` (the ``derain`` command).
The CLI and the flows call the same library functions; neither imports the other. Errors: one
hierarchy in :mod:`pipeline.errors`."""
