#!/usr/bin/env python3
"""Helpers for rotator/benches/scale.sh (python3 standard library only).

Subcommands (all print or write JSON; scale.sh drives them):
  gen             write N Certificates as multi-document YAML chunks
  clean           delete what earlier runs left in the scale namespaces (never the namespaces)
  snap            snapshot the API server's request counters and the CPU time of processes
  ready           one readiness poll: how many Certificates are Ready=True
  watch           sample a running controller every 0.5 s (sockets, VmRSS, VmHWM, CPU) and,
                  unless --window is given, poll readiness until all N are Ready
  delete-secrets  delete the Secrets of K Certificates and wait until they are re-issued
  report          print the results of a run as tables
"""

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

NAMESPACES = 20
SAMPLE_INTERVAL = 0.5
HZ = os.sysconf("SC_CLK_TCK")


def ns_name(i):
    return "scale-%02d" % i


def cert_name(i):
    return "c-%05d" % i


def cert_ns(i):
    return ns_name(i % NAMESPACES)


# ---------------------------------------------------------------- gen


def cmd_gen(a):
    os.makedirs(a.outdir, exist_ok=True)
    files = []
    for start in range(0, a.n, a.chunk):
        path = os.path.join(a.outdir, "certs-%05d.yaml" % (start // a.chunk))
        with open(path, "w") as f:
            for i in range(start, min(a.n, start + a.chunk)):
                ns, name = cert_ns(i), cert_name(i)
                f.write(
                    "---\napiVersion: lanyard.dev/v1\nkind: Certificate\n"
                    "metadata:\n  name: %s\n  namespace: %s\n"
                    "spec:\n  secretName: %s-tls\n  commonName: %s.%s.svc.cluster.local\n"
                    "  dnsNames: [%s.%s.svc.cluster.local, %s.%s.svc]\n"
                    "  issuerRef:\n    name: %s\n    kind: ClusterIssuer\n"
                    % (name, ns, name, name, ns, name, ns, name, ns, a.issuer)
                )
        files.append(path)
    print("\n".join(files))


# ---------------------------------------------------------------- process figures


def proc_cpu_s(pid):
    """utime + stime of a process, in seconds (None when it is gone or unknown)."""
    if not pid:
        return None
    try:
        with open("/proc/%s/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / HZ


def proc_status(pid):
    out = {}
    try:
        with open("/proc/%s/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "Threads"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def proc_sockets(pid):
    n = 0
    try:
        d = "/proc/%s/fd" % pid
        for fd in os.listdir(d):
            try:
                if os.readlink(os.path.join(d, fd)).startswith("socket:"):
                    n += 1
            except OSError:
                pass
    except OSError:
        return None
    return n


def machine_busy_s():
    """CPU time the whole machine spent busy (all CPUs, all processes), in seconds."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / HZ


def read_pid(path):
    try:
        with open(path) as f:
            pid = f.read().strip()
        return pid if pid and os.path.exists("/proc/" + pid) else None
    except OSError:
        return None


# ---------------------------------------------------------------- API server counters

SERIES = re.compile(r"^(apiserver_request_total|apiserver_longrunning_requests)\{(.*)\} (\S+)$")
# Watch health: watchers the API server closed because they did not read their events
# (apiserver_terminated_watchers_total), and consistent reads the watch cache could not serve
# (apiserver_watch_cache_consistent_read_total{fallback="true"}: it was behind etcd).
OTHER = re.compile(r"^(apiserver_terminated_watchers_total|apiserver_watch_cache_consistent_read_total)\{(.*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_other(text):
    other = {}
    for line in text.splitlines():
        m = OTHER.match(line)
        if not m:
            continue
        labels = dict(LABEL.findall(m.group(2)))
        if m.group(1) == "apiserver_terminated_watchers_total":
            key = "terminated watchers|%s" % labels.get("resource", "")
        else:
            if labels.get("fallback") != "true":
                continue
            key = "consistent reads fallen back to etcd|%s|%s" % (
                labels.get("resource", ""),
                "ok" if labels.get("success") == "true" else "failed",
            )
        other[key] = other.get(key, 0) + float(m.group(3))
    return other


def parse_metrics(text):
    requests, longrunning, codes = {}, {}, {}
    for line in text.splitlines():
        m = SERIES.match(line)
        if not m:
            continue
        labels = dict(LABEL.findall(m.group(2)))
        value = float(m.group(3))
        if labels.get("system_client"):
            # The API server's own loopback clients (system_client=kube-apiserver): not ours.
            continue
        res = labels.get("resource", "")
        sub = labels.get("subresource", "")
        if res:
            what = res + ("/" + sub if sub else "")
        else:
            what = "(non-resource) " + sub
        if m.group(1) == "apiserver_request_total":
            code = labels.get("code", "")
            key = "%s|%s|%s" % (labels.get("verb", ""), what, (code[:1] + "xx") if code else "?")
            requests[key] = requests.get(key, 0) + value
            exact = "%s|%s|%s" % (labels.get("verb", ""), what, code)
            codes[exact] = codes.get(exact, 0) + value
        else:
            key = "%s|%s" % (labels.get("verb", ""), what)
            longrunning[key] = longrunning.get(key, 0) + value
    return requests, longrunning, codes


def cmd_snap(a):
    t = time.time()
    text = api_request(a.proxy, "/metrics", "text/plain")[1].decode()
    requests, longrunning, codes = parse_metrics(text)
    snap = {
        "t": t,
        "requests": requests,
        "codes": codes,
        "other": parse_other(text),
        "longrunning": longrunning,
        "cpu": {
            "apiserver": proc_cpu_s(a.apiserver_pid),
            "etcd": proc_cpu_s(a.etcd_pid),
            "controller": proc_cpu_s(a.controller_pid),
            "machine": machine_busy_s(),
        },
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }
    with open(a.out, "w") as f:
        json.dump(snap, f)


# ---------------------------------------------------------------- readiness


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=120):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def api_request(proxy, path, accept="application/json", method="GET", ok=(200,)):
    """One request through `kubectl proxy --unix-socket` (one API request, no kubectl start-up)."""
    c = UnixHTTPConnection(proxy)
    try:
        c.request(method, path, headers={"Accept": accept, "Host": "localhost"})
        r = c.getresponse()
        body = r.read()
        if r.status not in ok:
            raise RuntimeError("%s %s: HTTP %d %s" % (method, path, r.status, body[:300].decode(errors="replace")))
        return r.status, body
    finally:
        c.close()


def api_get(proxy, path, accept="application/json"):
    return json.loads(api_request(proxy, path, accept)[1])


TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"


def ready_poll(proxy, cache=False):
    """One LIST of Certificates, as a server-side Table without the objects
    (the Ready printer column only). Returns (total, ready); raises on failure.
    cache=True reads the watch cache as it is (resourceVersion=0): only for progress when
    consistent reads fail."""
    if cache:
        t = api_get(proxy, "/apis/lanyard.dev/v1/certificates?resourceVersion=0&includeObject=None", TABLE)
        col = [c["name"] for c in t["columnDefinitions"]].index("Ready")
        rows = t.get("rows") or []
        return len(rows), sum(1 for r in rows if r["cells"][col] == "True")
    # A consistent read (no resourceVersion): what etcd holds. resourceVersion=0 would be cheaper
    # but answers from the watch cache as it is, and under load the cache was seen minutes behind
    # etcd (objects Ready in etcd still without status in the cache).
    t = api_get(proxy, "/apis/lanyard.dev/v1/certificates?includeObject=None", TABLE)
    col = [c["name"] for c in t["columnDefinitions"]].index("Ready")
    rows = t.get("rows") or []
    return len(rows), sum(1 for r in rows if r["cells"][col] == "True")


def cmd_clean(a):
    """Deletes what earlier runs left: the Certificates and Secrets in the scale namespaces
    (one deletecollection per namespace and kind, repeated while anything is left), the
    ClusterIssuer and its CA Secret, and the controller's Lease. Namespaces are kept (an API
    server without a namespace controller leaves a deleted namespace Terminating for ever)."""
    spaces = {
        m["metadata"]["name"]: (m.get("status") or {}).get("phase")
        for m in api_get(a.proxy, "/api/v1/namespaces")["items"]
    }
    wanted = [ns_name(i) for i in range(NAMESPACES)] + [a.controller_namespace]
    stuck = [ns for ns in wanted if spaces.get(ns) == "Terminating"]
    if stuck:
        raise SystemExit(
            "namespace(s) %s Terminating (an API server without a namespace controller keeps them so): "
            "start the API server afresh (its etcd data wiped)" % ", ".join(stuck)
        )
    present = [ns_name(i) for i in range(NAMESPACES) if ns_name(i) in spaces]
    have_crd = api_request(a.proxy, "/apis/lanyard.dev/v1", ok=(200, 404))[0] == 200
    gone = lambda path: api_request(a.proxy, path, method="DELETE", ok=(200, 404))
    for attempt in range(10):
        for ns in present:
            if have_crd:
                gone("/apis/lanyard.dev/v1/namespaces/%s/certificates" % ns)
            gone("/api/v1/namespaces/%s/secrets" % ns)
        left = 0
        for ns in present:
            if have_crd:
                t = api_get(
                    a.proxy,
                    "/apis/lanyard.dev/v1/namespaces/%s/certificates?includeObject=None" % ns,
                    TABLE,
                )
                left += len(t.get("rows") or [])
            t = api_get(a.proxy, "/api/v1/namespaces/%s/secrets?includeObject=None" % ns, TABLE)
            left += len(t.get("rows") or [])
        if left == 0:
            break
        print("%d objects left; deleting again" % left, file=sys.stderr)
        time.sleep(1)
    else:
        raise SystemExit("could not delete the objects of an earlier run")
    if have_crd:
        gone("/apis/lanyard.dev/v1/clusterissuers/%s" % a.issuer)
    if a.controller_namespace in spaces:
        gone("/apis/coordination.k8s.io/v1/namespaces/%s/leases/lanyard-controller" % a.controller_namespace)
        gone("/api/v1/namespaces/%s/secrets/%s" % (a.controller_namespace, a.issuer))


def cmd_ready(a):
    total, ready = ready_poll(a.proxy)
    print(json.dumps({"total": total, "ready": ready}))


# ---------------------------------------------------------------- watch


def cmd_watch(a):
    # Started before the controller: waits for scale.sh to write "PID T0" to --pid-file, so
    # the first sample is taken right after the controller starts.
    open(a.pid_file + ".waiting", "w").close()
    deadline = time.time() + 120
    while True:
        try:
            with open(a.pid_file) as f:
                pid, t0 = f.read().split()
            break
        except (OSError, ValueError):
            if time.time() > deadline:
                raise SystemExit("no controller PID in %s" % a.pid_file)
            time.sleep(0.01)
    a.pid, t0 = pid, float(t0)
    samples = []
    polls = []  # (start, end, total, ready)
    stop = threading.Event()
    state = {"all_ready_at": None, "error": None}

    def poller():
        interval = a.poll
        while not stop.is_set():
            s = time.time()
            cache_ready = None
            try:
                total, ready = ready_poll(a.proxy)
            except (RuntimeError, OSError, ValueError) as e:
                state["error"] = str(e)
                total, ready = -1, -1
                # The consistent read failed (under load the API server's watch cache fell minutes
                # behind etcd, and reads waiting for it timed out): look at the cache as it is, for
                # progress only; it never counts as Ready.
                try:
                    cache_ready = ready_poll(a.proxy, cache=True)[1]
                except (RuntimeError, OSError, ValueError):
                    cache_ready = -1
            e = time.time()
            polls.append((s - t0, e - t0, total, ready, cache_ready))
            if ready >= a.n and state["all_ready_at"] is None:
                state["all_ready_at"] = e
                return
            # At most one poll in flight; the next starts `interval` after this one ended.
            stop.wait(interval)

    def sample(force_sockets=False):
        now = time.time()
        st = proc_status(a.pid)
        # Counting sockets reads every fd link: with thousands open, only every 4th sample (2 s).
        last = next((x["sockets"] for x in reversed(samples) if x["sockets"] is not None), 0)
        count = force_sockets or last < 1000 or len(samples) % 4 == 0
        samples.append(
            {
                "t": now - t0,
                "sockets": proc_sockets(a.pid) if count else None,
                "rss": st.get("VmRSS"),
                "hwm": st.get("VmHWM"),
                "threads": st.get("Threads"),
                "cpu": proc_cpu_s(a.pid),
            }
        )

    def alive():
        return os.path.exists("/proc/%s/stat" % a.pid) and proc_status(a.pid) != {}

    result = {"t0": t0, "n": a.n, "mode": "window" if a.window else "until-ready"}
    if a.window:
        # At least --window seconds, then until the controller has settled: less than 10% of a
        # core over the last --idle seconds; at most --window-max seconds.
        def settled():
            recent = [x for x in samples if x["t"] >= samples[-1]["t"] - a.idle and x["cpu"] is not None]
            if len(recent) < 2 or recent[-1]["t"] - recent[0]["t"] < a.idle - SAMPLE_INTERVAL:
                return False
            return (recent[-1]["cpu"] - recent[0]["cpu"]) / (recent[-1]["t"] - recent[0]["t"]) < 0.10

        result["settled"] = False
        next_progress = t0 + 60
        while alive():
            sample()
            now = time.time()
            if now >= t0 + a.window and settled():
                result["settled"] = True
                sample(force_sockets=True)
                break
            if now >= t0 + a.window_max:
                sample(force_sockets=True)
                break
            if now >= next_progress:
                next_progress += 60
                sm = next((x for x in reversed(samples) if x["sockets"] is not None), samples[-1])
                print("  %4.0f s: not settled yet; %s sockets, VmRSS %s MiB, CPU %.1f s"
                      % (now - t0, sm["sockets"], "%.0f" % (sm["rss"] / 1024.0) if sm["rss"] else "?",
                         sm["cpu"] or 0), file=sys.stderr, flush=True)
            time.sleep(SAMPLE_INTERVAL)
        result["window_s"] = a.window
        result["window_max_s"] = a.window_max
    else:
        th = threading.Thread(target=poller, daemon=True)
        th.start()
        deadline = t0 + a.timeout
        settled_sample = None
        next_progress = t0 + 30
        while alive():
            sample()
            if time.time() >= next_progress:
                next_progress += 30
                last = next((q for q in reversed(polls) if q[3] >= 0), None)
                failed = sum(1 for q in polls if q[3] < 0)
                cache = next((q for q in reversed(polls) if q[4] is not None and q[4] >= 0), None)
                sm = next((x for x in reversed(samples) if x["sockets"] is not None), samples[-1])
                print(
                    "  %4.0f s: %s of %d Ready (poll ended at %s s)%s, %s sockets, VmRSS %s MiB, CPU %.1f s"
                    % (
                        time.time() - t0,
                        last[3] if last else "?",
                        a.n,
                        "%.0f" % last[1] if last else "?",
                        "; %d polls failed, the watch cache shows %d Ready (at %.0f s)" % (failed, cache[4], cache[1])
                        if failed and cache else (("; %d polls failed" % failed) if failed else ""),
                        sm["sockets"],
                        "%.0f" % (sm["rss"] / 1024.0) if sm["rss"] else "?",
                        sm["cpu"] or 0,
                    ),
                    file=sys.stderr,
                    flush=True,
                )
            if state["all_ready_at"] is not None:
                if time.time() >= state["all_ready_at"] + a.settle:
                    sample(force_sockets=True)
                    settled_sample = samples[-1]
                    break
            elif time.time() > deadline:
                result["timeout"] = True
                break
            time.sleep(SAMPLE_INTERVAL)
        stop.set()
        th.join(timeout=60)
        result["all_ready_s"] = (state["all_ready_at"] - t0) if state["all_ready_at"] else None
        result["settle_s"] = a.settle
        result["settled"] = settled_sample
        result["polls"] = polls
        result["poll_error"] = state["error"]
        # The readiness at the moment the last sample was taken before the
        # all-Ready poll ended: CPU then, for CPU to all Ready.
        if state["all_ready_at"]:
            before = [s for s in samples if s["t"] <= result["all_ready_s"] and s["cpu"] is not None]
            result["cpu_at_all_ready"] = before[-1]["cpu"] if before else None
    result["alive"] = alive()
    result["samples"] = samples
    with open(a.out, "w") as f:
        json.dump(result, f)
    if result.get("timeout"):
        last = polls[-1] if polls else None
        print("timeout: %s of %d Ready after %.0f s" % (last[3] if last else "?", a.n, a.timeout), file=sys.stderr)
        sys.exit(3)
    if not a.window and not result["alive"] and result["all_ready_s"] is None:
        print("the controller exited before all Certificates were Ready", file=sys.stderr)
        sys.exit(4)


# ---------------------------------------------------------------- delete-secrets


def cmd_delete_secrets(a):
    k = min(a.k, a.n)
    picked = sorted({(j * a.n) // k for j in range(k)})
    certs = api_get(a.proxy, "/apis/lanyard.dev/v1/certificates")["items"]
    harness = {"LIST|certificates": 1}
    by_key = {(c["metadata"]["namespace"], c["metadata"]["name"]): c for c in certs}
    targets = []
    for i in picked:
        c = by_key.get((cert_ns(i), cert_name(i)))
        if c is None:
            raise SystemExit("Certificate %s/%s not found" % (cert_ns(i), cert_name(i)))
        st = c.get("status") or {}
        targets.append(
            {
                "ns": cert_ns(i),
                "name": cert_name(i),
                "secret": c["spec"]["secretName"],
                "rev0": st.get("revision"),
            }
        )
    t0 = time.time()
    # Ten DELETEs at a time, so the K Secrets go missing at nearly the same moment.
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        list(
            pool.map(
                lambda t: api_request(
                    a.proxy, "/api/v1/namespaces/%s/secrets/%s" % (t["ns"], t["secret"]), method="DELETE"
                ),
                targets,
            )
        )
    harness["DELETE|secrets"] = len(targets)
    deleted_s = time.time() - t0
    secrets_back_s = done_s = None
    grace_from = None
    polls = cert_polls = failures = 0
    while True:
        now = time.time()
        if now - t0 > a.timeout:
            break
        try:
            secrets = api_get(a.proxy, "/api/v1/secrets", METADATA_LIST)["items"]
            polls += 1
            present = {(m["metadata"]["namespace"], m["metadata"]["name"]) for m in secrets}
            certs = api_get(a.proxy, "/apis/lanyard.dev/v1/certificates")["items"]
            cert_polls += 1
        except (RuntimeError, OSError, ValueError) as e:
            failures += 1
            print("delete-secrets poll failed: %s" % e, file=sys.stderr)
            time.sleep(a.poll)
            continue
        by_key = {(c["metadata"]["namespace"], c["metadata"]["name"]): c for c in certs}
        n_back = n_ready = n_rev = 0
        for t in targets:
            c = by_key[(t["ns"], t["name"])]
            st = c.get("status") or {}
            t["rev1"] = st.get("revision")
            ready = any(
                x.get("type") == "Ready" and x.get("status") == "True" for x in st.get("conditions") or []
            )
            back = (t["ns"], t["secret"]) in present
            n_back += back
            n_ready += back and ready
            n_rev += back and ready and t["rev1"] != t["rev0"]
        t_now = time.time() - t0
        if n_back == len(targets) and secrets_back_s is None:
            secrets_back_s = t_now
        if n_rev == len(targets):
            done_s = t_now
            break
        if n_ready == len(targets):
            # All back and Ready, some with the old revision: give the
            # status patches a grace period, then report what is there.
            grace_from = grace_from or time.time()
            if time.time() - grace_from > a.grace:
                done_s = t_now
                break
        time.sleep(a.poll)
    harness["LIST|secrets"] = polls
    harness["LIST|certificates"] += cert_polls
    if failures:
        harness["failed polls (not subtracted)"] = failures
    plus_one = sum(1 for t in targets if t["rev0"] is not None and t.get("rev1") == t["rev0"] + 1)
    deltas = {}
    for t in targets:
        d = (
            "unchanged"
            if t.get("rev1") == t["rev0"]
            else ("%+d" % (t["rev1"] - t["rev0"]) if t.get("rev1") is not None and t["rev0"] is not None else "n/a")
        )
        deltas[d] = deltas.get(d, 0) + 1
    out = {
        "k": len(targets),
        "delete_s": deleted_s,
        "secrets_back_s": secrets_back_s,
        "done_s": done_s,
        "timeout": done_s is None,
        "plus_one": plus_one,
        "revision_deltas": deltas,
        "polls": polls,
        "harness": {k: v for k, v in harness.items() if "|" in k},
        "failed_polls": failures,
        "poll_s": a.poll,
        "targets": targets,
    }
    with open(a.out, "w") as f:
        json.dump(out, f)


# ---------------------------------------------------------------- report


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def delta_requests(before, after, harness):
    """Per verb|resource|class: after - before, minus the harness's own requests
    (harness: {"VERB|resource": count}, all assumed 2xx)."""
    keys = set(before["requests"]) | set(after["requests"])
    d = {}
    for k in keys:
        v = after["requests"].get(k, 0) - before["requests"].get(k, 0)
        if v:
            d[k] = v
    own = {}
    for vr, count in (harness or {}).items():
        k = vr if vr.count("|") == 2 else vr + "|2xx"
        own[k] = count
        d[k] = d.get(k, 0) - count
        if d[k] == 0:
            del d[k]
    return d, own


def delta_codes(before, after):
    """Exact status codes of the requests that were not 2xx: {"VERB|resource|NXX": "409: 12"}."""
    out = {}
    b, a = before.get("codes") or {}, after.get("codes") or {}
    for k in sorted(set(a) | set(b)):
        d = a.get(k, 0) - b.get(k, 0)
        verb, what, code = k.split("|")
        if d and not code.startswith("2"):
            cls = "%s|%s|%sxx" % (verb, what, code[:1])
            out[cls] = (out[cls] + ", " if cls in out else "") + "%s: %d" % (code, d)
    return out


def longrunning_now(snap):
    return {k: v for k, v in snap["longrunning"].items() if v}


def fmt(v, unit="", prec=1):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return ("%." + str(prec) + "f%s") % (v, unit)
    return "%s%s" % (v, unit)


def mib(kb):
    return None if kb is None else kb / 1024.0


def phase_figures(d, name, n):
    """Figures of one phase directory entry (dict of loaded JSONs)."""
    w, b, a_ = d.get("watch"), d.get("before"), d.get("after")
    f = {"name": name}
    if not (w and b and a_):
        f["missing"] = True
        return f
    samples = w["samples"]
    socks = [s["sockets"] for s in samples if s["sockets"] is not None]
    hwm = [s["hwm"] for s in samples if s["hwm"] is not None]
    rss = [s["rss"] for s in samples if s["rss"] is not None]
    f["peak_sockets"] = max(socks) if socks else None
    f["peak_hwm_mib"] = mib(max(hwm)) if hwm else None
    f["final_rss_mib"] = mib(rss[-1]) if rss else None
    f["threads"] = samples[-1].get("threads") if samples else None
    harness = {}
    # When the controller last worked: the last 0.5 s sample with more than 10% of a core.
    busy = None
    for s0, s1 in zip(samples, samples[1:]):
        if s0["cpu"] is not None and s1["cpu"] is not None and s1["t"] > s0["t"]:
            if (s1["cpu"] - s0["cpu"]) / (s1["t"] - s0["t"]) > 0.10:
                busy = s1["t"]
    f["busy_until_s"] = busy
    f["observed_s"] = samples[-1]["t"] if samples else None
    if w["mode"] == "window" and "settled" in w and f["observed_s"] is not None:
        f["observed_s"] = "%.1f s (%s)" % (
            f["observed_s"], "settled" if w["settled"] else "NOT settled: stopped at the maximum")
    other_b, other_a = b.get("other") or {}, a_.get("other") or {}
    f["other"] = {
        k: other_a.get(k, 0) - other_b.get(k, 0)
        for k in set(other_a) | set(other_b)
        if other_a.get(k, 0) - other_b.get(k, 0)
    }
    f["terminated_watchers"] = int(sum(v for k, v in f["other"].items() if k.startswith("terminated"))) if (
        "other" in a_) else None
    if w["mode"] == "until-ready":
        f["all_ready_s"] = w.get("all_ready_s")
        if w.get("timeout"):
            last = next((q for q in reversed(w["polls"]) if q[3] >= 0), None)
            cache = next((q for q in reversed(w["polls"]) if len(q) > 4 and q[4] is not None and q[4] >= 0), None)
            f["all_ready_s"] = "TIMEOUT after %.0f s: %s Ready at %s s%s" % (
                samples[-1]["t"] if samples else 0, last[3] if last else "?", "%.0f" % last[1] if last else "?",
                " (watch cache: %d at %.0f s)" % (cache[4], cache[1]) if cache and (not last or cache[1] > last[1]) else "")
        f["rate"] = (n / w["all_ready_s"]) if w.get("all_ready_s") and not w.get("timeout") else None
        f["settled_sockets"] = (w.get("settled") or {}).get("sockets")
        f["settle_s"] = w.get("settle_s")
        f["poll_s"] = (sum(p[1] - p[0] for p in w["polls"]) / len(w["polls"])) if w["polls"] else None
        f["cpu_at_all_ready"] = w.get("cpu_at_all_ready")
        ok = sum(1 for q in w["polls"] if q[2] >= 0)
        cache = [q[4] for q in w["polls"] if len(q) > 4 and q[4] is not None]
        cache_ok = sum(1 for c in cache if c >= 0)
        harness["LIST|certificates"] = ok + cache_ok
        failed = len(w["polls"]) - ok + len(cache) - cache_ok
        if failed:
            # A poll that failed is taken to have failed in the API server (500 or 504).
            harness["LIST|certificates|5xx"] = failed
        f["failed_polls"] = len(w["polls"]) - ok
        f["polls"] = "%d (+%d of the watch cache)" % (len(w["polls"]), len(cache)) if cache else len(w["polls"])
        prog = []
        for frac in (0.01, 0.1, 0.5, 0.9, 1.0):
            hit = next((q for q in w["polls"] if q[3] >= frac * n and q[3] > 0), None)
            prog.append((frac, hit[1] if hit else None))
        f["progress"] = prog
    else:
        f["window_s"] = w.get("window_s")
        f["settled_sockets"] = socks[-1] if socks else None
    for extra in d.get("harness_extra") or []:
        for k, v in extra.items():
            harness[k] = harness.get(k, 0) + v
    reqs, own = delta_requests(b, a_, harness)
    f["requests"] = reqs
    f["codes"] = delta_codes(b, a_)
    f["harness"] = own
    f["total"] = sum(v for k, v in reqs.items() if "(non-resource)" not in k)
    f["per_cert"] = f["total"] / n if n else None
    f["longrunning"] = longrunning_now(a_)
    f["longrunning_before"] = longrunning_now(b)
    cb, ca = b["cpu"], a_["cpu"]
    f["controller_cpu_s"] = ca.get("controller")
    for p in ("apiserver", "etcd", "machine"):
        f[p + "_cpu_s"] = (ca[p] - cb[p]) if (ca.get(p) is not None and cb.get(p) is not None) else None
    # What else ran meanwhile (the other work on a shared machine, and the harness itself): the
    # machine's busy time minus the controller's (it started with the phase), the API server's
    # and etcd's.
    if f["machine_cpu_s"] is not None and None not in (f["apiserver_cpu_s"], f["etcd_cpu_s"], ca.get("controller")):
        f["other_cpu_s"] = f["machine_cpu_s"] - f["apiserver_cpu_s"] - f["etcd_cpu_s"] - ca["controller"]
    f["loadavg_end"] = " ".join(a_.get("loadavg") or []) or None
    f["wall_s"] = a_["t"] - b["t"]
    f["issued_lines"] = d.get("issued_lines")
    f["last_issued_s"] = (d["last_issued_epoch"] - w["t0"]) if d.get("last_issued_epoch") else None
    f["warn_lines"] = d.get("warn_lines")
    f["exit_s"] = d.get("exit_s")
    f["exit_code"] = d.get("exit_code")
    f["ready_after"] = d.get("ready_after")
    if w["mode"] == "until-ready" and w.get("timeout"):
        last = next((q for q in reversed(w["polls"]) if q[3] >= 0), None)
        f["ready_after"] = last[3] if last else None
    return f


def table(rows, headers, aligns=None):
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    aligns = aligns or ["<"] + [">"] * (len(headers) - 1)
    line = lambda r: "  ".join(("{:%s%d}" % (aligns[i], widths[i])).format(str(r[i])) for i in range(len(r)))
    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def requests_table(f):
    rows = []
    for k in sorted(f["requests"], key=lambda k: (k.split("|")[1], k.split("|")[0], k.split("|")[2])):
        verb, what, cls = k.split("|")
        codes = (f.get("codes") or {}).get(k)
        rows.append([verb, what, cls + (" (%s)" % codes if codes else ""), "%d" % f["requests"][k]])
    rows.append(["", "total (resource requests)", "", "%d" % f["total"]])
    return table(rows, ["verb", "resource", "code", "requests"], ["<", "<", "<", ">"])


def cmd_report(a):
    meta = load(os.path.join(a.dir, "meta.json")) or {}
    n = meta.get("n")
    out = []
    p = out.append
    p("Lanyard controller scale run")
    p("=" * 28)
    for k in ("started", "binary", "binary_sha256", "version", "kubeconfig", "server_version", "host"):
        if meta.get(k):
            p("%-16s %s" % (k.replace("_", " ") + ":", meta[k]))
    p("%-16s %s Certificates in %d namespaces (scale-00..scale-%02d), ClusterIssuer scale-ca (EC P-256 CA)"
      % ("objects:", n, NAMESPACES, NAMESPACES - 1))
    if meta.get("create_s") is not None:
        p("%-16s %.1f s to create the %s Certificates with kubectl (not part of the figures below)"
          % ("creation:", meta["create_s"], n))
    if meta.get("controller_args"):
        p("%-16s %s" % ("controller:", meta["controller_args"]))
    p("")
    phases = []
    for name, title in (("cold", "cold start"), ("restart", "restart")):
        d = {
            "watch": load(os.path.join(a.dir, name, "watch.json")),
            "before": load(os.path.join(a.dir, name, "snap-before.json")),
            "after": load(os.path.join(a.dir, name, "snap-after.json")),
        }
        extra = load(os.path.join(a.dir, name, "extra.json")) or {}
        d.update(extra)
        if d["watch"] is None:
            continue
        phases.append((title, phase_figures(d, name, n)))
    if not phases:
        p("no phase completed")
    # Summary table.
    rows = []
    col = lambda key, unit="", prec=1: [fmt(f.get(key), unit, prec) for _, f in phases]
    rows.append(["time to all Ready (controller start -> last Ready=True seen by the poll)"] + col("all_ready_s", " s"))
    rows.append(["Certificates/s"] + col("rate", "", 1))
    rows.append(["last `issued a certificate` line (s after start, from its timestamp)"] + col("last_issued_s", " s"))
    rows.append(["controller last busy (last 0.5 s sample with > 10% CPU, s after start)"] + col("busy_until_s", " s"))
    rows.append(["observation window (controller start to last sample)"] + col("observed_s", " s"))
    rows.append(["API requests (resource, harness's own subtracted)"] + [fmt(f.get("total"), "", 0) if f.get("total") is not None else "n/a" for _, f in phases])
    rows.append(["API requests per Certificate"] + col("per_cert", "", 2))
    rows.append(["peak sockets"] + col("peak_sockets"))
    rows.append(["sockets settled (10 s after all Ready / end of window)"] + col("settled_sockets"))
    rows.append(["peak VmHWM"] + col("peak_hwm_mib", " MiB"))
    rows.append(["final VmRSS"] + col("final_rss_mib", " MiB"))
    rows.append(["threads (last sample)"] + col("threads"))
    rows.append(["controller CPU (utime+stime, at end of phase)"] + col("controller_cpu_s", " s", 2))
    rows.append(["controller CPU at all Ready"] + col("cpu_at_all_ready", " s", 2))
    rows.append(["kube-apiserver CPU delta"] + col("apiserver_cpu_s", " s", 2))
    rows.append(["watchers the API server closed as unresponsive"] + col("terminated_watchers"))
    rows.append(["etcd CPU delta"] + col("etcd_cpu_s", " s", 2))
    rows.append(["machine CPU busy, all processes (%d CPUs)" % (os.cpu_count() or 0)] + col("machine_cpu_s", " s", 2))
    rows.append(["  of which other processes (harness, other work on the machine)"] + col("other_cpu_s", " s", 2))
    rows.append(["load average at the end of the phase"] + col("loadavg_end"))
    rows.append(["`issued a certificate` log lines"] + col("issued_lines"))
    rows.append(["WARN/ERROR log lines"] + col("warn_lines"))
    rows.append(["SIGTERM to exit"] + col("exit_s", " s", 2))
    rows.append(["exit status"] + col("exit_code"))
    rows.append(["readiness polls by the harness (LIST certificates)"] + col("polls"))
    rows.append(["readiness polls that failed"] + col("failed_polls"))
    rows.append(["mean poll duration"] + col("poll_s", " s", 2))
    rows.append(["Ready=True after the phase (of %s)" % n] + col("ready_after"))
    if phases:
        p(table(rows, ["figure"] + [t for t, _ in phases]))
        p("")
    for title, f in phases:
        if f.get("missing"):
            continue
        p("-- %s: API requests by verb and resource (delta of apiserver_request_total over %.1f s, "
          "system_client=\"\" only) --" % (title, f["wall_s"]))
        if f.get("harness"):
            p("   subtracted, the harness's own: " + ", ".join("%s %d" % (k.replace("|2xx", "").replace("|", " "), v)
                                                          for k, v in sorted(f["harness"].items())))
        p(requests_table(f))
        keys = set(f["longrunning"]) | set(f["longrunning_before"])
        lr = {k: f["longrunning"].get(k, 0) - f["longrunning_before"].get(k, 0) for k in keys}
        lr = {k: v for k, v in lr.items() if v}
        p("   open long-running requests (watches), change over the phase (apiserver_longrunning_requests): "
          + (", ".join("%s %+d" % (k.replace("|", " "), v) for k, v in sorted(lr.items())) or "none"))
        if f.get("other"):
            p("   watch health (deltas): " + ", ".join(
                "%s %d" % (k.replace("|", " "), v) for k, v in sorted(f["other"].items())))
        if f.get("progress"):
            p("   Ready progress (first poll reaching, s after start): "
              + ", ".join("%d%% %s" % (fr * 100, fmt(t, " s")) for fr, t in f["progress"]))
        p("")
    ds = load(os.path.join(a.dir, "delete-secrets.json"))
    if ds:
        p("-- delete-secrets: %d Secrets deleted while the restarted controller ran (polled every %s s) --"
          % (ds["k"], ds.get("poll_s", "?")))
        rows = [
            ["deleting them took (one DELETE each, 10 at a time)", fmt(ds["delete_s"], " s", 2)],
            ["all Secrets back, after the first DELETE", fmt(ds["secrets_back_s"], " s", 1)],
            ["all back, Ready, revision changed, after the first DELETE",
             fmt(ds["done_s"], " s", 1) + (" (TIMEOUT)" if ds["timeout"] else "")],
            ["the same, after the last DELETE",
             fmt(ds["done_s"] - ds["delete_s"] if ds["done_s"] is not None else None, " s", 1)],
            ["revision rose by exactly 1", "%d of %d" % (ds["plus_one"], ds["k"])],
            ["revision changes", ", ".join("%s: %d" % kv for kv in sorted(ds["revision_deltas"].items()))],
        ]
        try:
            with open(os.path.join(a.dir, "delete-secrets-issued.txt")) as fi:
                rows.append(["`issued a certificate` log lines meanwhile", fi.read().strip()])
        except OSError:
            pass
        p(table(rows, ["figure", "value"]))
        dsr = load(os.path.join(a.dir, "delete-secrets-requests.json"))
        if dsr:
            p("   API requests during it (harness's own subtracted: %s):" %
              ", ".join("%s %d" % (k.replace("|", " "), v) for k, v in sorted(ds["harness"].items())))
            f = {"requests": dsr["requests"], "total": dsr["total"], "codes": dsr.get("codes")}
            p(requests_table(f))
        p("")
    p("Notes: WATCH requests are counted by the API server when they end, so watches still open at the")
    p("end of a phase appear only as open long-running requests; the first controller's watches end when")
    p("it is stopped, between the phases, and are in neither table. The harness talks to the API server")
    p("through one `kubectl proxy`; readiness is polled with one consistent LIST of Certificates (no")
    p("resourceVersion) as a server-side Table without the objects (the Ready column), one poll at a time,")
    p("the next POLL_INTERVAL s after the previous one ended; those LISTs are subtracted above (a poll")
    p("that failed is taken to have failed in the API server, 5xx), and the time to all Ready is the end")
    p("of the first poll that saw all Ready (late by up to one poll interval plus the poll's duration).")
    p("Non-resource requests (the /metrics snapshots) are the harness's and are not in the totals. The API")
    p("server's and etcd's CPU include the cost of the polls.")
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    if a.out:
        with open(a.out, "w") as fo:
            fo.write(text)


def cmd_delta(a):
    """Requests between two snapshots minus the harness's own (for delete-secrets)."""
    b, af = load(a.before), load(a.after)
    harness = (load(a.harness) or {}).get("harness", {})
    reqs, own = delta_requests(b, af, harness)
    total = sum(v for k, v in reqs.items() if "(non-resource)" not in k)
    with open(a.out, "w") as f:
        json.dump({"requests": reqs, "own": own, "total": total, "codes": delta_codes(b, af)}, f)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--n", type=int, required=True)
    g.add_argument("--chunk", type=int, default=500)
    g.add_argument("--issuer", default="scale-ca")
    g.add_argument("--outdir", required=True)
    s = sub.add_parser("snap")
    s.add_argument("--proxy", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--apiserver-pid")
    s.add_argument("--etcd-pid")
    s.add_argument("--controller-pid")
    c = sub.add_parser("clean")
    c.add_argument("--proxy", required=True)
    c.add_argument("--issuer", default="scale-ca")
    c.add_argument("--controller-namespace", default="lanyard")
    r = sub.add_parser("ready")
    r.add_argument("--proxy", required=True)
    w = sub.add_parser("watch")
    w.add_argument("--pid-file", required=True)
    w.add_argument("--n", type=int, required=True)
    w.add_argument("--proxy", required=True)
    w.add_argument("--poll", type=float, default=2.0)
    w.add_argument("--timeout", type=float, default=1200)
    w.add_argument("--settle", type=float, default=10)
    w.add_argument("--window", type=float, help="observe at least this long, then until settled")
    w.add_argument("--window-max", type=float, default=900)
    w.add_argument("--idle", type=float, default=5)
    w.add_argument("--out", required=True)
    d = sub.add_parser("delete-secrets")
    d.add_argument("--k", type=int, default=100)
    d.add_argument("--n", type=int, required=True)
    d.add_argument("--proxy", required=True)
    d.add_argument("--timeout", type=float, default=300)
    d.add_argument("--grace", type=float, default=15)
    d.add_argument("--poll", type=float, default=1.0)
    d.add_argument("--out", required=True)
    dl = sub.add_parser("delta")
    dl.add_argument("--before", required=True)
    dl.add_argument("--after", required=True)
    dl.add_argument("--harness", required=True)
    dl.add_argument("--out", required=True)
    rp = sub.add_parser("report")
    rp.add_argument("--dir", required=True)
    rp.add_argument("--out")
    a = ap.parse_args()
    {
        "gen": cmd_gen,
        "snap": cmd_snap,
        "clean": cmd_clean,
        "ready": cmd_ready,
        "watch": cmd_watch,
        "delete-secrets": cmd_delete_secrets,
        "delta": cmd_delta,
        "report": cmd_report,
    }[a.cmd](a)


if __name__ == "__main__":
    main()
