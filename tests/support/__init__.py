"""What the tests share, written once. Test modules import from here, never from each other.

    configs    CONFIGS: the server configurations the suites run (every engine alone and under the master)
    servers    Server (a real `webmodels serve` on 127.0.0.1:0), Background, FreshClients, log timestamps
    processes  wait_for, free ports, children/gone by pid, listening sockets
    raw        Conn: exactly the bytes we choose on the wire; Reply, parse_replies
    lab        Lab: `webmodels up` on a free block of ports
    exlab      ExerciseLab: a lab driven as an attendee drives the Exercises tab
    locust     Locust as a subprocess: headless runs, the web UI, the accounting's balance
    browser    headless Chromium (DevTools over a pipe, or one --dump-dom run)
"""

from .configs import CONFIGS, UNDER_MASTER, Config
from .processes import addr_in_use, children, free_port, gone, stop_process, wait_for, with_free_port
from .raw import Conn, Reply, reply_until_close
from .servers import Background, FreshClients, Server, log_time_of

__all__ = ["CONFIGS", "UNDER_MASTER", "Background", "Config", "Conn", "FreshClients", "Reply", "Server", "addr_in_use",
           "children", "free_port", "gone", "log_time_of", "reply_until_close", "stop_process", "wait_for",
           "with_free_port"]
