"""The HTTP layer: routes decode, make one engine call, and build the response."""

from service.api.app import create_app

__all__ = ["create_app"]
