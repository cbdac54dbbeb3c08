"""The server behind `make ui`: MLflow's own app, its UI opening on model training, not on GenAI.

MLflow 3.17's UI shows either its GenAI pages (traces, sessions, judges) or its model-training pages (runs,
models, registry). Which one is a per-browser setting, the local-storage key `mlflow.workflowType_v1`, GenAI when
unset; a `workflowType` URL parameter overrides it for one address, but the UI's own links drop the parameter. The
experiment tag `mlflow.experimentKind` does not decide it (the UI derives an experiment's kind from the mode).

This app serves MLflow's page with one script more, which
- stores the model-training mode where the browser stores no mode yet, so every experiment and every link inside
  the UI opens on runs; a mode chosen with the UI's GenAI / Model training switch is kept;
- sends the root address (`http://127.0.0.1:5000/`, what the server prints) to the training runs of the experiment
  `imgclf ui` names in IMGCLF_UI_EXPERIMENT_ID; the sidebar's Home link still shows MLflow's home page.

pyproject.toml registers it as the MLflow server app `imgclf` (entry point group `mlflow.app`, like MLflow's own
`basic-auth`): `mlflow ui --app-name imgclf`.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from imgclf.errors import UserError
from imgclf.tracking.store import MACHINE_LEARNING, runs_route

APP_NAME = "imgclf"  # its entry point in pyproject.toml
APP_GROUP = "mlflow.app"
HOME_EXPERIMENT_ENV = "IMGCLF_UI_EXPERIMENT_ID"  # set by `imgclf ui`: the experiment the root address opens
# The UI keeps the mode with useLocalStorage({key: "mlflow.workflowType", version: 1}): JSON under `<key>_v<version>`.
MODE_STORAGE_KEY = "mlflow.workflowType_v1"
INDEX_ENDPOINT = "serve"  # mlflow.server's view of "/" (under the static prefix, if any)
INDEX_FILE = "index.html"
# MLflow 3's server starts seven job-runner processes (huey consumers, each importing MLflow) for its GenAI jobs
# (judges, trace scoring), which a training project never queues: 20-25 CPU-seconds at every start on 2 cores.
JOB_EXECUTION_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"

log = logging.getLogger(__name__)


def require_installed() -> None:
    """A clear error where the environment was installed before the app was registered (MLflow's own says only
    "Failed to find app")."""
    if not importlib.metadata.entry_points(group=APP_GROUP, name=APP_NAME):
        raise UserError(f"the MLflow server app {APP_NAME!r} is not registered in this environment (an install "
                        "older than pyproject.toml's entry point): run `make setup`, or `pip install -e .`")


def server_environment(environ: Mapping[str, str], home_experiment_id: str) -> dict[str, str]:
    """The environment `imgclf ui` runs MLflow's server in: the experiment the root address opens, and MLflow's
    GenAI job runners off unless the user's environment turns them on."""
    return {JOB_EXECUTION_ENV: "false", **environ, HOME_EXPERIMENT_ENV: home_experiment_id}


def page_script(home_experiment_id: str | None) -> str:
    """The script put first in MLflow's page: the model-training mode unless the browser stores a mode, and the
    root address (no route after `#`) replaced by the runs of `home_experiment_id`, when given."""
    key, mode = json.dumps(MODE_STORAGE_KEY), json.dumps(json.dumps(MACHINE_LEARNING))
    # Storage blocked (a privacy setting): the UI falls back to its own default.
    script = f"try{{if(localStorage.getItem({key})===null)localStorage.setItem({key},{mode})}}catch(error){{}}"
    if home_experiment_id:
        home = json.dumps("#" + runs_route(home_experiment_id))
        script += f'if(["","#","#/"].includes(location.hash))location.replace({home});'
    return f"<script>{script}</script>"


def with_page_script(html: str, home_experiment_id: str | None) -> str:
    """MLflow's index page with `page_script` first in its head, so it runs before the UI's bundle."""
    if "<head>" not in html:
        log.warning("MLflow's %s has no <head>: the UI keeps its own default mode (GenAI)", INDEX_FILE)
        return html
    return html.replace("<head>", "<head>" + page_script(home_experiment_id), 1)


def create_app():
    """MLflow's server app with its index page served by `with_page_script`: the ASGI app under uvicorn (what
    `mlflow ui` runs by default), else the Flask app (gunicorn, waitress)."""
    import flask
    import mlflow.server
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server.fastapi_app import create_fastapi_app

    app = mlflow.server.app
    mlflow_index = app.view_functions[INDEX_ENDPOINT]
    home_experiment_id = os.environ.get(HOME_EXPERIMENT_ENV) or None

    def serve_index():
        index = Path(app.static_folder) / INDEX_FILE
        if not index.is_file():  # MLflow's own answer (a source install without the built UI)
            return mlflow_index()
        html = with_page_script(index.read_text(encoding="utf-8"), home_experiment_id)
        response = flask.Response(html, mimetype="text/html")
        response.headers["Cache-Control"] = "no-cache"  # never a page cached from a plain `mlflow ui`
        return response

    app.view_functions[INDEX_ENDPOINT] = serve_index
    return create_fastapi_app(app) if _MLFLOW_SGI_NAME.get() == "uvicorn" else app
