"""Locust for the lab: one user class per server, a master-side fault injector, fault accounting, a Servers tab.

Only `locustfile.py`, `chaos.py` and `servers_tab.py` import Locust or gevent; `workloads.py` and
`accounting.py` are plain Python so they can be unit-tested without Locust's monkey-patching.
"""
