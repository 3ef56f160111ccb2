"""The liveblog's routing table, as the original design wrote it."""

channel_routing = {
    "http.request": "examples.liveblog.consumers.http_consumer",
    "websocket.connect": "examples.liveblog.consumers.ws_connect",
    "websocket.disconnect": "examples.liveblog.consumers.ws_disconnect",
}
