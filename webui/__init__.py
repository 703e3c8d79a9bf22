"""A web page over the gateway's gRPC API: upload a photo, see the recommendations, click to record views."""

from .server import WebUI, WebUISettings, create_app, local_target, start_webui

__all__ = ["WebUI", "WebUISettings", "create_app", "local_target", "start_webui"]
