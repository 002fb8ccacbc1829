"""Headers every answer of the app carries, whichever route (or error handler) made it."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A year: browsers that saw the site over https once refuse plain http to it for that long.
HSTS = "max-age=31536000"


class StrictTransportSecurity:
    """Adds `Strict-Transport-Security` to every response; installed only when `base_url` is https.

    Over plain http the header means nothing to a browser, and sending it from a site that is
    reached over http (the demo, an intranet host) would only mislead whoever reads the headers.
    """

    def __init__(self, app: ASGIApp, value: str = HSTS):
        self.app, self.value = app, value

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("Strict-Transport-Security", self.value)
            await send(message)

        await self.app(scope, receive, sending)
