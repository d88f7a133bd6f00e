#!/usr/bin/env python3
"""Runs a command (the stress example) under a real Prometheus that scrapes
its exporter and evaluates loopwatch's alert rules, then proves the Grafana
dashboard: every variable query finds values, and every panel's query, with
the variables substituted as Grafana would, parses and returns at least one
series. Also checks that every alert rule evaluated without error.

usage: dashboard_check.py --dashboard FILE --rules FILE [--expect-firing ALERT]... -- COMMAND...
COMMAND may contain {addr}, replaced by the address the exporter must bind.
Exits non-zero on any failure (and with the command's status if it failed).
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

# What Grafana puts for its own variables, for a run scraped every second.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(web, path, **params):
    url = f"http://{web}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def substitute(text, values):
    def one(m):
        name = m.group(1) or m.group(2)
        if name in BUILTINS:
            return BUILTINS[name]
        if name not in values:
            raise KeyError(f"unknown variable ${name}")
        vals = values[name]
        # Grafana's rendering of a multi-value variable inside a regex matcher.
        return vals[0] if len(vals) == 1 else "(" + "|".join(re.escape(v) for v in vals) + ")"

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, text)


def panels_of(dashboard):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def check_structure(dashboard, failures):
    """What Grafana needs to import the file."""
    for key in ("title", "uid", "schemaVersion", "panels", "templating"):
        if key not in dashboard:
            failures.append(f"dashboard: no '{key}'")
    names = [v.get("name") for v in dashboard.get("templating", {}).get("list", [])]
    for needed in ("job", "instance", "runtime"):
        if needed not in names:
            failures.append(f"dashboard: no '{needed}' variable")
    ids = [p.get("id") for p in panels_of(dashboard)]
    if len(ids) != len(set(ids)):
        failures.append("dashboard: panel ids are not unique")
    for panel in panels_of(dashboard):
        if "gridPos" not in panel or "type" not in panel:
            failures.append(f"panel {panel.get('title')!r}: no gridPos or type")
        if panel.get("type") != "row" and not panel.get("targets"):
            failures.append(f"panel {panel.get('title')!r}: no query")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dashboard", required=True)
    parser.add_argument("--rules", required=True)
    parser.add_argument("--expect-firing", action="append", default=[], metavar="ALERT",
                        help="an alert that must have fired during the run")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    prometheus = shutil.which("prometheus")
    if not prometheus:
        sys.exit("dashboard_check: no prometheus binary (apt-get install prometheus)")

    with open(args.dashboard) as f:
        dashboard = json.load(f)
    failures = []
    check_structure(dashboard, failures)

    addr = f"127.0.0.1:{free_port()}"
    web = f"127.0.0.1:{free_port()}"
    work = tempfile.mkdtemp(prefix="loopwatch-dashboard-")
    config = os.path.join(work, "prometheus.yml")
    with open(config, "w") as f:
        f.write(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: ['{os.path.abspath(args.rules)}']\n"
            "scrape_configs:\n  - job_name: stress\n"
            f"    static_configs:\n      - targets: ['{addr}']\n"
        )
    log = open(os.path.join(work, "prometheus.log"), "w")
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={work}/data",
         f"--web.listen-address={web}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{web}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                sys.exit(f"dashboard_check: Prometheus did not start; see {log.name}")
            time.sleep(0.2)

        began = time.time()
        status = subprocess.call([c.replace("{addr}", addr) for c in command])
        ended = time.time()
        if status != 0:
            print(f"dashboard_check: the command failed with status {status}")
            sys.exit(status)
        # Rules are evaluated every second; let the last scrapes land.
        time.sleep(3)

        # The last moment the target was up: queries are evaluated there, as
        # if the dashboard were looked at during the run.
        up = api(web, "query_range", query='up{job="stress"}', start=began, end=ended + 2, step=1)
        points = [float(t) for s in up["data"]["result"] for t, v in s["values"] if v == "1"]
        if not points:
            sys.exit("dashboard_check: Prometheus never scraped the exporter")
        at = max(points)
        print(f"dashboard_check: {len(points)} scrapes; evaluating at the last one")

        # Variables, in order: each one's query may use the ones before it.
        values = {}
        for var in dashboard["templating"]["list"]:
            if var.get("type") != "query":
                continue
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
            if not m:
                failures.append(f"variable {var['name']}: not label_values(selector, label): {query}")
                continue
            selector = substitute(m.group(1), values)
            series = api(web, "series", **{"match[]": selector, "start": at - 60, "end": at})
            found = sorted({s[m.group(2)] for s in series.get("data", []) if m.group(2) in s})
            print(f"  variable {var['name']:<10} {found}")
            if series.get("status") != "success" or not found:
                failures.append(f"variable {var['name']}: {selector} found nothing: {series}")
            values[var["name"]] = found or ["none"]

        queries = [(p["title"], t["refId"], t["expr"]) for p in panels_of(dashboard)
                   for t in p.get("targets", [])]
        queries += [(f"annotation {a['name']}", "-", a["expr"])
                    for a in dashboard.get("annotations", {}).get("list", []) if "expr" in a]
        for title, ref, expr in queries:
            query = substitute(expr, values)
            answer = api(web, "query", query=query, time=at)
            count = len(answer.get("data", {}).get("result", []))
            ok = answer.get("status") == "success" and count > 0
            print(f"  {'ok ' if ok else 'BAD'} {count:>3} series  {title} [{ref}]")
            if not ok:
                failures.append(f"panel {title!r} [{ref}]: {query}\n    -> {answer}")

        rules = api(web, "rules")
        for group in rules["data"]["groups"]:
            for rule in group["rules"]:
                state = rule.get("state", rule["type"])
                print(f"  rule {rule['name']:<28} health {rule['health']:<8} {state}")
                if rule["health"] != "ok":
                    failures.append(f"rule {rule['name']}: {rule.get('lastError')}")
        if not rules["data"]["groups"]:
            failures.append("no alert rules were loaded")
        # What fired while the command ran, from Prometheus's own ALERTS series.
        fired = api(web, "query", time=at,
                    query=f'max by (alertname) (max_over_time(ALERTS{{alertstate="firing"}}[{int(at - began) + 1}s]))')
        fired = sorted(r["metric"]["alertname"] for r in fired["data"]["result"])
        print(f"  fired during the run: {fired}")
        for alert in args.expect_firing:
            if alert not in fired:
                failures.append(f"alert {alert} did not fire during the run")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    if failures:
        print("dashboard_check: FAILED")
        for f in failures:
            print(" -", f)
        print(f"(Prometheus's log: {log.name})")
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)
    print(f"dashboard_check: {len(queries)} queries and the variables returned series; rules evaluated cleanly")


if __name__ == "__main__":
    main()
