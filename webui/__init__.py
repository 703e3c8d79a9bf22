"""A web page over the gateway's gRPC API: upload a photo, see the recommendations, click to record views."""

from .server import WebUI, create_app, listen_address, local_target, start_webui

__all__ = ["WebUI", "create_app", "listen_address", "local_target", "start_webui"]
