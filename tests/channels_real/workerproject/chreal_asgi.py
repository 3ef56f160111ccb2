"""The runworker test application: a ChannelNameRouter with one worker consumer."""

from __future__ import annotations

import os
from typing import Any

import django

django.setup()

from channels.consumer import SyncConsumer  # noqa: E402
from channels.routing import ChannelNameRouter, ProtocolTypeRouter  # noqa: E402


class TaskConsumer(SyncConsumer):  # type: ignore[misc]
    """Records every task it handles: one line per message, with this process's id."""

    def task_run(self, message: dict[str, Any]) -> None:
        line = f"{os.getpid()} {message['n']}\n"
        fd = os.open(os.environ["CHREAL_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


application = ProtocolTypeRouter({"channel": ChannelNameRouter({"tasks": TaskConsumer.as_asgi()})})
