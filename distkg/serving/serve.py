"""`distkg serve --run RUN`: the predict queries over HTTP JSON, on Ray Serve, bound to 127.0.0.1.

POST / with ``{"query": "s|r|?|t"}`` (or ``{"subject", "relation", "object", "time"}``, ``?`` for
the entity asked for), optional ``"top"`` (default 10) and ``"filter"`` (``none`` / ``known``),
answers with distkg predict's JSON for that query plus ``batch``: how many concurrent requests
were scored together. Concurrent requests are batched (``serve.batch``): the names and times of
each are resolved on their own, then one score call covers the batch, which is where a model's
time goes. Bad requests get a 4xx with ``{"error": ...}`` naming what is wrong (400: not JSON, a
bad field, an unknown name or time, with the closest names; 405: not a POST); the server keeps
serving.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np

from distkg.errors import DistkgError, QueryError

log = logging.getLogger("distkg")

MAX_TOP = 1000


def parse_request(body: bytes) -> tuple[object, int, str]:
    """(Query, top, filter) from a request body; QueryError (-> 400) naming the bad part."""
    from distkg.serving.predict import FILTERS, query_from_json

    try:
        obj = json.loads(body or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QueryError(f"request body is not JSON ({getattr(e, 'msg', e)}); send e.g. "
                         '{"query": "Barack Obama Sr.|isMarriedTo|?|1960", "top": 10}') from None
    if not isinstance(obj, dict):
        raise QueryError("request body must be a JSON object, e.g. {\"query\": \"s|r|?|t\"}")
    unknown = set(obj) - {"query", "subject", "relation", "object", "time", "top", "filter"}
    if unknown:
        raise QueryError(f"unknown field(s) {', '.join(sorted(unknown))}; known: query (or subject, relation, object, "
                         "time), top, filter")
    top, filt = obj.get("top", 10), obj.get("filter", "none")
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= MAX_TOP:
        raise QueryError(f"top must be an integer 1..{MAX_TOP}, got {top!r}")
    if filt not in FILTERS:
        raise QueryError(f"filter must be one of {', '.join(FILTERS)}, got {filt!r}")
    return query_from_json(obj, "request"), top, filt


def build_app(run: str | Path, overrides: list[str] | None = None, max_batch: int = 64, batch_wait_s: float = 0.005):
    """The Ray Serve application answering queries with ``run`` (module docstring)."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    # a replica must accept a whole batch of requests at once, or batches never fill
    @serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=max(max_batch, 5))
    class Predict:
        def __init__(self, run: str, overrides: list[str]) -> None:
            from distkg.serving.predict import load_predictor

            self.pred = load_predictor(run, overrides)

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=batch_wait_s)
        async def answer(self, items: list[tuple[object, list[int], int, str]]) -> list[dict]:
            out: list[dict | None] = [None] * len(items)
            for filt in {f for *_, f in items}:  # one score call per filter mode present (at most two)
                rows = [i for i, it in enumerate(items) if it[3] == filt]
                ids = np.array([items[i][1] for i in rows], dtype=np.int64)
                scores, ents = self.pred.top(ids, max(items[i][2] for i in rows), filt)
                for j, i in enumerate(rows):
                    q, _, k, _ = items[i]
                    out[i] = self.pred.answers(q, scores[j, :k], ents[j, :k]) | {"batch": len(items)}
            return out

        async def __call__(self, request: Request) -> JSONResponse:
            if request.method != "POST":
                return JSONResponse({"error": f"{request.method} not allowed: POST a JSON query"}, status_code=405)
            try:
                query, top, filt = parse_request(await request.body())
                ids = self.pred.ids(query)
            except DistkgError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            return JSONResponse(await self.answer((query, ids, top, filt)))

    return Predict.bind(str(Path(run).resolve()), list(overrides or []))  # the replica's working folder is not ours


def start(run: str | Path, host: str = "127.0.0.1", port: int = 8000, overrides: list[str] | None = None,
          max_batch: int = 64, batch_wait_s: float = 0.005, num_cpus: int | None = None) -> bool:
    """Start Ray (local, on 127.0.0.1, unless RAY_ADDRESS names one) and Serve on host:port with the
    app; returns whether a local Ray was started here (``stop`` shuts it down)."""
    from distkg.runtime.cluster import connect

    started = connect(num_cpus=num_cpus)
    from ray import serve

    # one HTTP proxy, on the head: on a cluster of several nodes on one machine (tests/runtime's
    # loopback cluster) a proxy per node would bind the same host:port twice
    serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
    serve.run(build_app(run, overrides, max_batch, batch_wait_s), name="distkg", route_prefix="/")
    return started


def stop(started_ray: bool) -> None:
    import ray
    from ray import serve

    serve.shutdown()
    if started_ray:
        ray.shutdown()


def check_before_start(run: str | Path, host: str, port: int, overrides: list[str]) -> None:
    """What would fail inside Ray, in one line before it starts: the port taken, the run unreadable
    (the replica loads the same predictor)."""
    import socket

    from distkg.serving.predict import load_predictor

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server binds it
        try:
            sock.bind((host, port))
        except OSError as e:
            raise DistkgError(f"cannot serve on {host}:{port}: {e.strerror} (another server there? choose --port)") from None
    load_predictor(run, overrides)


def serve_forever(run: str | Path, host: str, port: int, overrides: list[str], max_batch: int, batch_wait_s: float) -> None:
    """`distkg serve`: start, print the address, wait for Ctrl-C or SIGTERM, then shut Serve and Ray down
    (a shell's background job ignores SIGINT, so SIGTERM must also end it cleanly). A signal while
    Serve starts is kept and acted on once it has started (raised inside Ray's start-up, a
    KeyboardInterrupt was swallowed there and the server ran on); a second one stops at once."""
    from distkg.extras import require

    require("serve", "distkg serve")
    signals: list[int] = []

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    def during_start(signum, frame):
        if signals:
            raise KeyboardInterrupt
        signals.append(signum)
        log.warning("stopping once Serve has started (again to stop now)")

    if host not in ("127.0.0.1", "localhost"):
        log.warning("serving on %s: reachable from other machines, with no authentication", host)
    check_before_start(run, host, port, overrides)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, during_start)
    started = False
    try:
        started = start(run, host, port, overrides, max_batch, batch_wait_s)
        for sig in (signal.SIGINT, signal.SIGTERM):  # after start: ray.init installs its own SIGTERM handler
            signal.signal(sig, interrupt)
        if signals:
            raise KeyboardInterrupt
        print(f"serving {run} at http://{host}:{port}/ (POST {{\"query\": \"s|r|?|t\"}}); Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if not started:  # stopped inside start: did it start a local Ray?
            import ray

            started = ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
        stop(started)
