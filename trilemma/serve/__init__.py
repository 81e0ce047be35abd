"""`trilemma serve`: a web page and an HTTP API over the models (`api.py`), with a batching job queue (`jobs.py`).

    trilemma serve                                  # every shipped model, http://127.0.0.1:7860
    trilemma serve --models all runs/emoji          # the shipped models and yours
    trilemma serve --models shapes-ldm-f8 runs/emoji --api-key KEY --host 0.0.0.0
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trilemma.model import TextToImageModel
from trilemma.registry import model_class, shipped_models
from trilemma.serve.api import Limits, create_app
from trilemma.serve.jobs import JobManager

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def resolve_models(names: list[str] | None) -> dict[str, Path]:
    """The models a server may load: shipped names and folders given at start-up, and nothing else (requests name
    one of these; no path ever comes from a request). Default: every shipped text-to-image model; "all" among the
    names stands for them, so that `all runs/mine` serves yours beside them."""
    shipped = shipped_models()
    if not names:
        return dict(shipped)
    models = dict(shipped) if "all" in names else {}  # "all": every shipped model, beside the folders named
    for name in names:
        if name == "all":
            continue
        path = shipped.get(name) or Path(name)
        if not (path / "config.json").is_file():
            raise ValueError(f"--models {name}: neither a shipped model ({', '.join(shipped)}) nor a model folder "
                             "(with config.json)")
        try:
            klass = model_class(json.loads((path / "config.json").read_text())["model_class"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"--models {name}: {path / 'config.json'} names no model class; is it a trilemma "
                             "checkpoint folder?") from None
        if not issubclass(klass, TextToImageModel):
            raise ValueError(f"--models {name} holds a {klass.__name__}, which does not draw images from text")
        key = path.name if name not in shipped else name
        if key in models:
            raise ValueError(f"--models: two models are called {key!r}; rename one folder")
        models[key] = path
    return models


def build_app(models: list[str] | None = None, outdir: str | Path = "outputs/serve", api_key: str | None = None,
              queue_size: int = 32, max_batch_images: int = 32, limits=None):
    """The FastAPI app and its job manager (the tests and the load test build it so too)."""
    manager = JobManager(resolve_models(models), outdir, queue_size=queue_size, max_batch_images=max_batch_images)
    return create_app(manager, limits or Limits(), api_key or None), manager  # an empty key is no key


def serve(host: str = "127.0.0.1", port: int = 7860, **options) -> None:
    import uvicorn

    if host not in LOOPBACK and not options.get("api_key"):
        print(f"warning: serving on {host} without --api-key: anyone who reaches this port can use the models",
              file=sys.stderr)
    app, manager = build_app(**options)
    if host in LOOPBACK:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        # A page on another site cannot reach a loopback server through DNS rebinding: only loopback names are served.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "::1", "[::1]"])
    print(f"trilemma: {len(manager.models)} models ({', '.join(manager.models)}); open http://{host}:{port}/ "
          f"(API documented at /docs); images go to {manager.outdir}", file=sys.stderr)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        manager.close()
