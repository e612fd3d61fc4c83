"""Named exit statuses, so a supervisor (the prefork master, Docker, `webmodels up`) can say why a process ended.

Their own module because the CLI, the supervisor and the master need them without importing the handler.
"""

from __future__ import annotations

EXIT_CONFIG = 2  # bad flags or environment
EXIT_BOOT = 3  # a prefork worker could not start; the master stops instead of respawning forever
EXIT_CRASH = 86  # /fault/crash: hard exit, no cleanup
EXIT_WATCHDOG = 87  # the event loop stalled longer than --watchdog
EXIT_RECYCLED = 88  # a prefork worker reached --max-requests
EXIT_TIMEOUT = 89  # a prefork worker got SIGABRT from the master for exceeding --timeout
EXIT_NAMES = {
    0: "ok", EXIT_CONFIG: "config error", EXIT_BOOT: "boot error", EXIT_CRASH: "injected crash",
    EXIT_WATCHDOG: "watchdog", EXIT_RECYCLED: "recycled", EXIT_TIMEOUT: "timeout",
}
