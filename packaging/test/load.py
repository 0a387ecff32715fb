#!/usr/bin/env python3
"""Steady load for packaging/test/upgrade.sh: the caller app.

GETs URL with a Host header (the service called through the caller's mesh
agent), one request every INTERVAL on a fresh connection, until STOP_FILE
exists or the request or time bound is reached. Prints one line per
request, flushed at once so the test can read it while it runs:

    ok <response body>          (status 200)
    fail <status or error> ...  (anything else)
"""

import argparse
import http.client
import os
import sys
import time
import urllib.parse


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--host", required=True, help="Host header: the service to call")
    p.add_argument("--stop-file", required=True)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--max-requests", type=int, default=20000)
    p.add_argument("--max-seconds", type=float, default=180)
    a = p.parse_args()
    u = urllib.parse.urlsplit(a.url)
    deadline = time.monotonic() + a.max_seconds
    for _ in range(a.max_requests):
        if os.path.exists(a.stop_file) or time.monotonic() > deadline:
            break
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        try:
            conn.request("GET", u.path or "/", headers={"Host": a.host})
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace").strip()
            if resp.status == 200:
                line = "ok " + body
            else:
                line = "fail %d %s %s" % (resp.status, resp.getheader("x-mesh-reason", ""), body[:80])
        except Exception as e:  # every error is a failed request
            line = "fail %s %s" % (type(e).__name__, e)
        finally:
            conn.close()
        sys.stdout.write(line.replace("\n", " ") + "\n")
        sys.stdout.flush()
        time.sleep(a.interval)


if __name__ == "__main__":
    main()
