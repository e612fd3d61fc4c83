"""`webmodels bench` and `webmodels report`: the processes-vs-threads table, measured.

The bench starts the servers itself (pinned with `taskset`), drives them with Locust run as a subprocess
(never imported here: Locust monkey-patches the interpreter with gevent), samples each server's
`/_lab/stats` while the load runs, and writes every raw figure to `results.json`. The report (Markdown,
HTML, PNG charts) is built from `results.json` alone, so `webmodels report DIR` can rebuild it anywhere.

    scenarios.py  one function per row of the table: what to run, what to keep
    runner.py     servers (pinned, optionally restarted like Docker would), the stats sampler, progress
    locustrun.py  one headless Locust subprocess: its stats, its fault accounting, its own CPU
    report.py     results.json → report.md, report.html, *.png
"""

SCHEMA = 1
# the order of the report; scenarios.SCENARIOS holds the functions (kept out of here: the CLI imports this cheaply)
SCENARIO_NAMES = ("memory", "faults", "hang", "leak", "communication", "creation", "context", "wrk", "multicore",
                  "io", "overthreading")
