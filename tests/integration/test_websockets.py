"""WebSockets behind TetherMiddleware under real uvicorn (its `websockets` implementation):
the connection's request id, echoed on the handshake, and a malformed one refused with a
problem."""

from __future__ import annotations

import json

import pytest
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tether import current_deadline, current_request_id

from .servers import uvicorn_server
from .test_failure_cases import app_with

pytestmark = pytest.mark.integration


async def who_am_i(websocket: WebSocket) -> None:
    await websocket.accept()
    async for text in websocket.iter_text():  # answers each message with what it sees
        deadline = current_deadline()
        await websocket.send_json(
            {"said": text, "request_id": current_request_id(), "deadline": repr(deadline)}
        )


async def test_a_websocket_keeps_its_request_id_for_the_whole_connection() -> None:
    """The caller's X-Request-ID is the connection's ambient id in every message handled,
    and comes back on the handshake's answer; without one, a new id does; no deadline, even
    when the caller sends one."""
    app = app_with(WebSocketRoute("/ws", who_am_i))
    async with uvicorn_server(app, http="httptools") as url:
        ws_url = url.replace("http://", "ws://") + "/ws"
        headers = {"X-Request-ID": "ws-42", "X-Request-Timeout": "100"}
        async with connect(ws_url, additional_headers=headers) as websocket:
            assert websocket.response.headers["x-request-id"] == "ws-42"
            for text in ("a", "b"):
                await websocket.send(text)
                seen = json.loads(await websocket.recv())
                assert seen == {"said": text, "request_id": "ws-42", "deadline": "None"}
        async with connect(ws_url) as websocket:
            given = websocket.response.headers["x-request-id"]
            await websocket.send("c")
            assert json.loads(await websocket.recv())["request_id"] == given


async def test_a_websocket_with_a_malformed_request_id_gets_a_problem() -> None:
    """A malformed X-Request-ID: the handshake is answered 400 with a validation problem
    naming the header, and the server goes on."""
    app = app_with(WebSocketRoute("/ws", who_am_i))
    async with uvicorn_server(app, http="httptools") as url:
        ws_url = url.replace("http://", "ws://") + "/ws"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url, additional_headers={"X-Request-ID": "bad id!"}):
                pass
        answer = refused.value.response
        assert answer.status_code == 400
        assert answer.headers["content-type"] == "application/problem+json"
        problem = json.loads(answer.body or b"")
        assert problem["type"].endswith("validation-failed")
        assert problem["header"] == "X-Request-ID"
        assert problem["request_id"] == answer.headers["x-request-id"]
        async with connect(ws_url) as websocket:
            await websocket.send("still serving")
            assert json.loads(await websocket.recv())["said"] == "still serving"
