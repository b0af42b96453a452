"""The web dashboard: one static page (HTML, CSS, ES modules) served by the API itself.

The page holds no secrets and reads nothing on the server side; its scripts call the public API
v1 with the user's token, so serving the page needs no authentication.
"""

from service.dashboard._router import STATIC_DIR, router

__all__ = ["STATIC_DIR", "router"]
