"""`upocr serve`: the HTTP API (FastAPI under uvicorn) and the demo page that is its client.

`upocr.serve.app` builds the application (endpoints, answers), `upocr.serve.guards` holds what keeps it
up (Host and cross-site checks, upload limits and deadline, the work queue), `upocr.serve.server` runs it
in one process or several, one model each.

    import upocr
    from upocr.serve import start_server
    server = start_server(upocr.Predictor(), "127.0.0.1", 0)   # a background thread; port 0: any free one
    print(server.url); server.stop()
"""

from upocr.serve.app import DEFAULT_MAX_PIXELS, PREVIEW_MAX_SIDE, Limits, ServeState, make_app
from upocr.serve.guards import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_UPLOAD_SECONDS,
    RETRY_AFTER_SECONDS,
)
from upocr.serve.server import RunningServer, ServeSettings, serve, start_server

__all__ = [
    "DEFAULT_MAX_CONCURRENT", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_QUEUE", "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_UPLOAD_SECONDS", "PREVIEW_MAX_SIDE", "RETRY_AFTER_SECONDS", "Limits", "RunningServer", "ServeSettings",
    "ServeState", "make_app", "serve", "start_server",
]
