"""The OpenAI-compatible HTTP API (`/v1`): the arena as a server for the `openai` client, curl and harnesses.

`protocol` turns request bodies into engine requests and engine events into OpenAI replies;
`routes` is the ASGI app (auth, busy server, streaming, adapter management); `serve` mounts it on
the Gradio server or runs it headless. Nothing here imports gradio or the app.
"""
from .protocol import Limits
from .routes import ApiSettings, build_api

__all__ = ["ApiSettings", "Limits", "build_api"]
