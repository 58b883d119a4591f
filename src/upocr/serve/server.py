"""Running the API under uvicorn: one process, or `workers` processes each with its own model.

One process (`workers=1`): the model is loaded here and the app served from this process. Several: uvicorn
starts `workers` processes that share the listening socket; each builds its app with
`app_from_environment` from the settings this process put in `SETTINGS_VARIABLE` (weights, predictor
options, limits), so each loads one model. Ctrl+C or SIGTERM stops accepting connections and waits for
the requests already accepted (running, queued, or still uploading within their deadline) to be answered;
a second Ctrl+C stops at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import uvicorn
from uvicorn.supervisors import Multiprocess

from upocr.options import PredictorOptions
from upocr.predict import Predictor
from upocr.serve import guards
from upocr.serve.app import Limits, ServeState, make_app

SETTINGS_VARIABLE = "UPOCR_SERVE_SETTINGS"
# Connections the kernel holds for us while every worker is busy: a burst beyond the queue gets 503
# answers, not resets (finding N4; socketserver's default of 5 reset 5-24 of 40 simultaneous clients).
LISTEN_BACKLOG = 2048
WORKER_START_SECONDS = 300


@dataclass
class ServeSettings:
    """What a worker process needs to build its app: where the model is and how to serve it."""

    weights: str | None = None
    device: str = "cpu"
    options: PredictorOptions = field(default_factory=lambda: PredictorOptions(keep_output=False))
    model_label: str = "model"
    limits: Limits = field(default_factory=Limits)
    host: str = "127.0.0.1"
    allowed_hosts: Sequence[str] = ()

    def to_json(self) -> str:
        values = asdict(self)
        values["options"] = {name: str(value) if isinstance(value, Path) else value
                             for name, value in values["options"].items()}
        return json.dumps(values)

    @classmethod
    def from_json(cls, text: str) -> "ServeSettings":
        values = json.loads(text)
        hints = typing.get_type_hints(PredictorOptions)
        options = {name: Path(value) if value is not None and "Path" in str(hints[name]) else value
                   for name, value in values["options"].items()}
        return cls(**{**values, "limits": Limits(**values["limits"]), "options": PredictorOptions(**options),
                      "allowed_hosts": tuple(values["allowed_hosts"])})

    def load_predictor(self) -> Predictor:
        return Predictor(options=self.options, weights=self.weights, device=self.device)

    def build_app(self, predictor: Predictor | None = None) -> Any:
        if predictor is None:
            predictor = self.load_predictor()
        state = ServeState(predictor=predictor, model_label=self.model_label, limits=self.limits)
        return make_app(state, host=self.host, allowed_hosts=self.allowed_hosts)


class Server(uvicorn.Server):
    """uvicorn's server, except that a Ctrl+C or SIGTERM it has already answered (by finishing the accepted
    requests and stopping) ends `serve` normally instead of being raised again as KeyboardInterrupt / death
    by the signal: `upocr serve` then says "stopped" and exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()  # uvicorn's record of the signals it would raise again


def app_from_environment() -> Any:
    """The app of one worker process (uvicorn's factory with --workers): its own model, loaded here."""
    return ServeSettings.from_json(os.environ[SETTINGS_VARIABLE]).build_app()


def uvicorn_config(app: Any, host: str, port: int, *, workers: int = 1, log_requests: bool = True,
                   factory: bool = False) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host.strip("[]"), port=port, workers=workers, factory=factory,
        # No limit_concurrency: uvicorn counts every open connection against it, so connections stalled
        # in their headers would make every request 503 (N1 by another door); the work queue bounds the work.
        backlog=LISTEN_BACKLOG, limit_concurrency=None,
        timeout_graceful_shutdown=None,  # accepted work is finished; a second Ctrl+C stops at once
        access_log=log_requests, log_level="info" if log_requests else "warning",
        log_config=None if not log_requests else uvicorn.config.LOGGING_CONFIG,
        server_header=False, proxy_headers=False,
        # A worker is "ready" once its model is loaded: torch's import and the weights take far more than
        # uvicorn's default 5 s on a busy CPU, and a worker not ready in time is killed and restarted.
        timeout_worker_healthcheck=WORKER_START_SECONDS,
    )


class RunningServer:
    """A server in a background thread of this process (tests, notebooks): `url`, `state`, `stop()`."""

    def __init__(self, settings: ServeSettings, predictor: Predictor, port: int = 0, *, log_requests: bool = False) -> None:
        self.app = settings.build_app(predictor)
        self.state: ServeState = self.app.state.serve
        self.config = uvicorn_config(self.app, settings.host, port, log_requests=log_requests)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise OSError(f"upocr serve could not listen on {settings.host}:{port}")
            self.thread.join(0.01)
        self.host, self.port = self.server.servers[0].sockets[0].getsockname()[:2]

    @property
    def url(self) -> str:
        return f"http://{'[' + self.host + ']' if ':' in self.host else self.host}:{self.port}/"

    def stop(self, wait: float = 30) -> None:
        """Graceful: no new connections; requests already accepted are answered first."""
        self.server.should_exit = True
        self.thread.join(wait)


def start_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 0, *, model_label: str = "model",
                 limits: Limits | None = None, allowed_hosts: Sequence[str] = (),
                 log_requests: bool = False) -> RunningServer:
    """`predictor` served on (host, port) from a background thread (port 0: any free port; see `.url`)."""
    settings = ServeSettings(model_label=model_label, limits=limits or Limits(), host=host,
                             allowed_hosts=tuple(allowed_hosts))
    return RunningServer(settings, predictor, port, log_requests=log_requests)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (IPv6 for an IPv6 address); OSError when the port is taken."""
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if guards.is_ipv6(host) or host == "::" else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)  # the worker processes serve it
    return sock


def serve(settings: ServeSettings, port: int = 8000, *, workers: int = 1, predictor: Predictor | None = None) -> None:
    """Serve until Ctrl+C / SIGTERM, finishing accepted requests first. With `workers` > 1 each worker
    process loads its own model from `settings`; with one, `predictor` (or one loaded here) serves."""
    sock = bind(settings.host, port)
    port = sock.getsockname()[1]
    shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)
    url = f"http://{'[' + shown + ']' if guards.is_ipv6(shown) else shown}:{port}/"
    if workers > 1:
        os.environ[SETTINGS_VARIABLE] = settings.to_json()
        config = uvicorn_config("upocr.serve.server:app_from_environment", settings.host, port, workers=workers,
                                factory=True)
        print(f"upocr serve: {workers} worker processes, one model each; open {url}  (Ctrl+C to stop)", flush=True)
        Multiprocess(config, sockets=[sock]).run()
        return
    config = uvicorn_config(settings.build_app(predictor), settings.host, port)
    print(f"upocr serve: open {url}  (Ctrl+C to stop)", flush=True)
    Server(config).run(sockets=[sock])
    print("upocr serve: stopped", flush=True)
