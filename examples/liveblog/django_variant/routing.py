"""The Django liveblog's routing table."""

channel_routing = {
    "http.request": "examples.liveblog.django_variant.consumers.http_consumer",
    "websocket.connect": "examples.liveblog.django_variant.consumers.ws_connect",
    "websocket.disconnect": "examples.liveblog.django_variant.consumers.ws_disconnect",
}
