"""What the tests share: real servers, raw connections, the lab, Locust, Chromium (one module each)."""

from .servers import *  # noqa: F401,F403
from .servers import addr_in_use  # noqa: F401
