"""channel-layers: a pluggable, multi-backend channel layer for Django Channels and asyncio.

The public API is re-exported here; everything else may change between releases.
"""

from layers.core.backend import Backend, Capability, GroupPayload, Put
from layers.core.config import configure, from_url, get_channel_layer, layer_from_config
from layers.core.errors import (
    BackendError,
    BackendUnavailable,
    ChannelFull,
    ChannelNotOwned,
    ConfigurationError,
    InvalidMessage,
    LayerClosed,
    LayerError,
    MessageTooLarge,
    MissingDriver,
    UnknownBackend,
    UnknownOption,
)
from layers.core.layer import ChannelLayer, SupportsChannelLayer
from layers.core.names import non_local_name, valid_channel_name, valid_group_name
from layers.core.objects import Channel, Group, Message, Pending
from layers.core.registry import available_backends, get_backend, register_backend
from layers.core.serializers import Serializer, register_serializer

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "Capability",
    "Channel",
    "ChannelFull",
    "ChannelLayer",
    "ChannelNotOwned",
    "ConfigurationError",
    "Group",
    "GroupPayload",
    "InvalidMessage",
    "LayerClosed",
    "LayerError",
    "Message",
    "MessageTooLarge",
    "MissingDriver",
    "Pending",
    "Put",
    "Serializer",
    "SupportsChannelLayer",
    "UnknownBackend",
    "UnknownOption",
    "__version__",
    "available_backends",
    "configure",
    "from_url",
    "get_backend",
    "get_channel_layer",
    "layer_from_config",
    "non_local_name",
    "register_backend",
    "register_serializer",
    "valid_channel_name",
    "valid_group_name",
]
