"""A live session dashboard in the browser (``cortexloop dashboard``, ``cortexloop run --dashboard``).

It follows one rig through the MQTT bus and its session file and pushes what changed to the page
by server-sent events (``docs/dashboard.md``). Needs the ``dashboard`` extra (starlette, uvicorn).
"""

from controller.dashboard.server import DashboardOptions, check_http_bind, serve

__all__ = ["DashboardOptions", "check_http_bind", "serve"]
