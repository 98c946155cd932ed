"""Where a deployment's locations come from: the run's parameter, else a Prefect Variable on
the server (``prefect variable set derain_source s3://archive/raw``), else the worker's
environment. Variables change what the next run reads without a new ``prefect deploy``;
``infra/local/stack.sh start`` sets them for the local stack."""

from __future__ import annotations

import os

from prefect import get_run_logger

from pipeline.errors import UsageError

# parameter -> (Prefect Variable, environment variable of the worker)
SETTINGS = {
    "source": ("derain_source", "DERAIN_SOURCE"),
    "destination": ("derain_destination", "DERAIN_DESTINATION"),
    "model_registry": ("derain_models", "DERAIN_MODELS"),
    "content_url": ("derain_content", "DERAIN_CONTENT"),
    "storage_path": ("derain_checkpoints", "DERAIN_CHECKPOINTS"),
}


def configured(name: str, value: str | None, *, required: bool = True) -> str | None:
    """``value`` when the run was given one; else the Prefect Variable named in
    :data:`SETTINGS`; else the worker's environment variable. A ``{{ $VAR }}`` that
    `prefect deploy` could not fill counts as unset."""
    from prefect.variables import Variable

    if value and "{{" not in value:
        return value
    variable, env = SETTINGS[name]
    found, origin = Variable.get(variable, default=None), f"Prefect Variable {variable}"
    if not found:
        found, origin = os.environ.get(env), f"${env}"
    if found:
        get_run_logger().info("%s from %s: %s", name, origin, found)
        return str(found)
    if required or value:
        raise UsageError(
            f"no {name}: pass it as a parameter, or set the Prefect Variable {variable} "
            f"(`prefect variable set {variable} VALUE`) or {env} in the worker's environment"
        )
    return None
