"""Durable objects inside an existing Starlette (or FastAPI) app, under ``/objects``.

    uvicorn examples.starlette_mount:app --port 8000
    curl -X POST -H 'authorization: Bearer demo' \\
        http://127.0.0.1:8000/objects/Counter/name/alice/increment     # {"n":1}
    curl http://127.0.0.1:8000/                                         # the host app's own route

The host app owns the public port, its middleware and its logging; duro adds no second public
listener. The duro App runs in the host's lifespan; it opens only its cluster listener (on
127.0.0.1, a free port, authenticated), through which processes sharing the backend forward
calls to each other. With FastAPI, the same two lines apply:
``api.mount("/objects", objects)`` and ``FastAPI(lifespan=lifespan)``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import duro
from duro.server import configure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from counter_http import Counter

objects_app = duro.App()
objects_app.namespace(Counter)


def bearer(conn: Any, namespace: str, object_id: duro.ObjectId) -> bool:
    """The ``auth=`` hook: runs before duro says anything about namespaces or objects."""
    return bool(conn.headers.get("authorization") == "Bearer demo")


objects = configure(objects_app, auth=bearer)


async def home(request: Request) -> JSONResponse:
    """A route of the host app itself."""
    return JSONResponse({"hello": "host", "objects": str(request.url_for("objects", path="/"))})


@contextlib.asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    """Start the duro App with the host app, close it (drain, flush, release) at shutdown."""
    async with objects_app:
        yield


app = Starlette(routes=[Route("/", home), Mount("/objects", app=objects, name="objects")],
                lifespan=lifespan)
