"""`webmodels bench` and `webmodels report`: the processes-vs-threads table, measured.

The bench starts the servers itself (pinned with `taskset`), drives them with Locust run as a subprocess
(never imported here: Locust monkey-patches the interpreter with gevent) or with small raw-socket clients
where Locust cannot count what matters, samples each server's `/_lab/stats` while the load runs, and writes
the figures to `results.json` (compact). The report (Markdown, HTML, PNG charts) is built from
`results.json` alone, so `webmodels report DIR` can rebuild it anywhere.

    scenarios/    one module per row of the table (run + cells + report section + chart + why), registered
                  once in scenarios/__init__.py
    kit.py        what scenarios share: the plan, side-by-side and alone runs, small statistics, packed samples
    runner.py     servers (port 0, pinned, optionally restarted like Docker would), the stats sampler, progress
    locustrun.py  one headless Locust subprocess: its stats, its fault accounting, its own CPU
    rawclient.py  asyncio raw-socket clients: per-connection counts, probes, trickled heads
    report.py     results.json → report.md, report.html, *.png (the frame; sections come from the scenarios)
"""

# results.json's layout; `webmodels report` reads this one only (3: the soak from Locust's chaos, the hang row's
# hung threads, the communication row's fixed counts)
SCHEMA = 3
