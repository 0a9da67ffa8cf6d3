"""The operator at scale: N RLHFJobs at once on a private local cluster (real control plane, kwok nodes).

    .venv/bin/python bench/bench_operator.py [--jobs 10 100 300] [--out docs/benchmarks.md]

Starts its own LocalCluster in a temporary home (removed at the end), applies the CRD, and for each N
starts a fresh operator process (`python -m rlhf_operator operator`, watching one fresh namespace),
creates N RLHFJobs whose stage pods kwok completes after a short run, waits until every one has
Succeeded and records:

- wall time from the first create to the last job Succeeded;
- p50/p99 of `rlhf_operator_stage_transition_seconds` (seeing a stage's Job finish -> creating the
  next stage's Job), interpolated from the histogram's buckets like PromQL's histogram_quantile, and
  a coarse external cross-check from the API objects (next Job's creationTimestamp minus the previous
  Job's Complete time; both have one-second granularity);
- the operator's peak RSS (VmHWM) and CPU seconds, per N (one process per N);
- API requests per job: the operator's own (`rlhf_operator_api_requests_total`, every request the
  operator's Kube class sends; kopf's list/watch requests are a constant handful and not in it) and
  the API server's total `apiserver_request_total` over the run (all clients: operator, Job
  controller, scheduler, kwok, garbage collector, this script) less the idle rate and this script's
  own polls.

The stock simulated cluster has two single-GPU reward nodes, which would run the reward-model stage
of N jobs two at a time and measure GPU quota instead of the operator; the bench adds two simulated
nodes with 256 GPUs to each GPU node group (`--stock-nodes` keeps the stock cluster).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import signal
import ssl
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "hack"), str(ROOT / "operator")]

import yaml  # noqa: E402
from kubernetes import client  # noqa: E402
from kubernetes import config as kube_config  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from localcluster import LocalCluster, load_shape, node_manifests, wait_established  # noqa: E402
from rlhf_operator.api.v1alpha1 import PIPELINE_STAGES  # noqa: E402
from tests.conftest import Kube  # noqa: E402
from tests.integration.operator_harness import SIM, create_pvc, rlhfjob  # noqa: E402
from tests.support.launchers import OperatorLauncher, wait_http_ready  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

STAGES = tuple(stage.value for stage in PIPELINE_STAGES)
SECTION = "## Operator at scale"
Quantiles = dict[str, float | None]


# ---------------------------------------------------------------------------------- cluster
class BenchCluster(LocalCluster):
    """The local cluster, optionally with kube-controller-manager's client rate limit raised."""

    def __init__(self, name: str, home: Path, controller_qps: int | None) -> None:
        super().__init__(name, home=home)
        self.controller_qps = controller_qps

    def _kwokctl_config(self, versions: dict[str, str]) -> str:
        first, rest = super()._kwokctl_config(versions).split("\n---\n", 1)
        if self.controller_qps:
            options = yaml.safe_load(first)
            args = {"kube-api-qps": self.controller_qps, "kube-api-burst": 2 * self.controller_qps}
            options["componentsPatches"] = [
                {
                    "name": "kube-controller-manager",
                    "extraArgs": [{"key": k, "value": str(v)} for k, v in args.items()],
                }
            ]
            first = yaml.safe_dump(options, sort_keys=False)
        return first + "\n---\n" + rest

    def controller_manager_throttle(self) -> float:
        """Seconds kube-controller-manager's requests waited in its client-side rate limiter."""
        for pid in self.pids():
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            if not args or not args[0].endswith("kube-controller-manager"):
                continue
            port = next(a.split("=", 1)[1] for a in args if a.startswith("--secure-port="))
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            try:
                text = urllib.request.urlopen(
                    f"https://127.0.0.1:{port}/metrics", context=context, timeout=10
                ).read()
            except OSError:
                return float("nan")
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.decode().splitlines()
                if line.startswith("rest_client_rate_limiter_duration_seconds_sum")
            )
        return float("nan")


def add_gpu_capacity(cluster: LocalCluster, gpus: int = 256, per_group: int = 2) -> None:
    """Two big simulated nodes per GPU node group, so that GPU quota does not serialize the stages."""
    shape = load_shape()
    extra = []
    for node in node_manifests(shape):
        labels = node["metadata"]["labels"]
        group = labels["eks.amazonaws.com/nodegroup"]
        index = int(node["metadata"]["name"].rsplit("-", 1)[1])
        if "nvidia.com/gpu" not in node["status"]["capacity"] or index >= per_group:
            continue
        name = f"bench-{group}-{index}"
        node["metadata"]["name"] = labels["kubernetes.io/hostname"] = name
        node["spec"]["providerID"] = node["spec"]["providerID"].rsplit("/", 1)[0] + f"/i-bench{index}{group}"
        capacity = dict(node["status"]["capacity"], pods="1000")
        capacity["nvidia.com/gpu"] = str(gpus)
        node["status"] = {"capacity": capacity, "allocatable": capacity}
        extra.append(node)
    cluster.kubectl(
        "create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": extra})
    )
    cluster.kubectl("wait", "--for=condition=Ready", "nodes", "--all", "--timeout=120s", timeout=150)


def apiserver_requests(cluster: LocalCluster) -> dict[str, float]:
    """apiserver_request_total summed by resource (all verbs, codes and clients)."""
    text = cluster.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, value = line.rsplit(" ", 1)
        match = re.search(r'resource="([^"]*)"', labels)
        sub = re.search(r'subresource="([^"]*)"', labels)
        resource = (match.group(1) if match else "") + (f"/{sub.group(1)}" if sub and sub.group(1) else "")
        totals[resource] = totals.get(resource, 0.0) + float(value)
    return totals


# ---------------------------------------------------------------------------------- operator
class Operator:
    """The operator under test (tests.support.launchers), with its metrics endpoint."""

    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path, python: Path) -> None:
        self.metrics_port = free_port()
        # Every other setting at its default (the launcher drops RLHF_OPERATOR_* from the shell).
        env = {"RLHF_OPERATOR_NAMESPACES": namespace, "RLHF_OPERATOR_METRICS_PORT": str(self.metrics_port)}
        self.launcher = OperatorLauncher(
            kubeconfig, log_path, env, python=python, pythonpath=ROOT / "operator"
        )
        self.launcher.start()
        assert self.launcher.process is not None
        self.process = self.launcher.process

    def wait_ready(self, timeout: float = 60) -> None:
        self.launcher.wait_ready(timeout)
        wait_http_ready(f"http://127.0.0.1:{self.metrics_port}/metrics", self.process, timeout)
        time.sleep(1.0)  # let the watches start

    def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read()
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return out

    def proc_status(self) -> dict[str, float]:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        )
        stat = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return {
            "hwm_mib": int(fields["VmHWM"].split()[0]) / 1024,
            "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
            "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
        }

    def stop(self) -> None:
        self.launcher.stop()


# ---------------------------------------------------------------------------------- statistics
def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """PromQL's histogram_quantile over cumulative bucket counts {upper bound: count}."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * ((rank - below) / max(count - below, 1e-12))
        lower, below = bound, count
    return lower


def transition_buckets(before: dict[str, Any], after: dict[str, Any]) -> dict[float, float]:
    name = "rlhf_operator_stage_transition_seconds_bucket"
    old, new = before.get(name, {}), after.get(name, {})
    return {float(dict(labels)["le"]): value - old.get(labels, 0.0) for labels, value in new.items()}


def operator_requests(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    name = "rlhf_operator_api_requests_total"
    old, new = before.get(name, {}), after.get(name, {})
    out = {}
    for labels, value in new.items():
        label = dict(labels)
        out[f"{label['verb']} {label['resource']}"] = value - old.get(labels, 0.0)
    return {k: v for k, v in sorted(out.items()) if v}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _stored_complete(job: Any) -> datetime | None:
    """When the API server stored the Job controller's last status write (the Complete one)."""
    times = [
        m.time
        for m in job.metadata.managed_fields or []
        if m.manager == "kube-controller-manager" and m.subresource == "status" and m.time
    ]
    return max(times) if times else None


def external_transitions(batch: client.BatchV1Api, namespace: str) -> tuple[list[float], list[float]]:
    """Next stage Job's creationTimestamp minus the previous one's finish (1 s granularity), from the
    Complete condition's lastTransitionTime (set by the Job controller before it sends the write) and
    from the time the API server stored that write (managedFields)."""
    jobs = batch.list_namespaced_job(namespace, label_selector="app.kubernetes.io/managed-by=rlhf-operator")
    by_owner: dict[str, dict[str, Any]] = {}
    for job in jobs.items:
        labels = job.metadata.labels or {}
        by_owner.setdefault(labels.get("rlhf-operator.dev/job-name", ""), {})[
            labels.get("rlhf-operator.dev/stage", "")
        ] = job
    gaps, stored_gaps = [], []
    for stages in by_owner.values():
        for earlier, later in itertools.pairwise(STAGES):
            prev, nxt = stages.get(earlier), stages.get(later)
            if prev is None or nxt is None:
                continue
            done = next(
                (c for c in prev.status.conditions or [] if c.type == "Complete" and c.status == "True"), None
            )
            if done is not None:
                gaps.append((nxt.metadata.creation_timestamp - done.last_transition_time).total_seconds())
                stored = _stored_complete(prev)
                if stored is not None:
                    stored_gaps.append((nxt.metadata.creation_timestamp - stored).total_seconds())
    return gaps, stored_gaps


# ---------------------------------------------------------------------------------- one run
def job_manifest(name: str, namespace: str, run_duration: str) -> dict[str, Any]:
    job = rlhfjob(name, namespace)
    job["spec"]["stages"]["precompute"]["shards"] = 1
    for stage in job["spec"]["stages"].values():
        annotations = (stage.get("pod") or {}).get("annotations") or {}
        if f"{SIM}/run-duration" in annotations:
            annotations[f"{SIM}/run-duration"] = run_duration
    return job


def run_once(
    cluster: BenchCluster,
    kube: Kube,
    n: int,
    *,
    workdir: Path,
    run_duration: str,
    timeout: float,
    idle_rate: float,
    python: Path,
) -> dict[str, Any]:
    namespace = f"bench-{n}-{int(time.time())}"
    cluster.kubectl("create", "namespace", namespace)
    create_pvc(kube, namespace)
    operator = Operator(cluster.kubeconfig, namespace, workdir / f"operator-{namespace}.log", python)
    custom = client.CustomObjectsApi()
    batch = client.BatchV1Api()
    try:
        operator.wait_ready()
        op_before = operator.metrics()
        api_before = apiserver_requests(cluster)
        throttle_before = cluster.controller_manager_throttle()
        manifests = [job_manifest(f"job-{i:04d}", namespace, run_duration) for i in range(n)]
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda body: custom.create_namespaced_custom_object(
                        "rlhf-operator.dev", "v1alpha1", namespace, "rlhfjobs", body
                    ),
                    manifests,
                )
            )
        created_s = time.monotonic() - started
        polls, timed_out = 0, False
        phases: dict[str, int] = {}
        while True:
            time.sleep(1.0)
            listing = custom.list_namespaced_custom_object(
                "rlhf-operator.dev", "v1alpha1", namespace, "rlhfjobs"
            )
            polls += 1
            phases = {}
            for item in listing["items"]:
                phase = (item.get("status") or {}).get("phase") or "None"
                phases[phase] = phases.get(phase, 0) + 1
            if phases.get("Succeeded", 0) + phases.get("Failed", 0) >= n:
                break
            if time.monotonic() - started > timeout:
                timed_out = True
                break
        wall_s = time.monotonic() - started
        op_after = operator.metrics()
        api_after = apiserver_requests(cluster)
        throttle_s = cluster.controller_manager_throttle() - throttle_before
        proc = operator.proc_status()
        external, stored = external_transitions(batch, namespace)
    finally:
        operator.stop()
    buckets = transition_buckets(op_before, op_after)
    own = operator_requests(op_before, op_after)
    api_delta = {k: v - api_before.get(k, 0.0) for k, v in api_after.items()}
    api_total = sum(api_delta.values())
    # Requests this script made during the run: the creates, the polls, and the two /metrics reads
    # are outside the deltas except the last one.
    bench_requests = n + polls + 1
    cluster_requests = api_total - idle_rate * wall_s - bench_requests
    errors = op_after.get("rlhf_operator_reconcile_errors_total", {})
    return {
        "jobs": n,
        "namespace": namespace,
        "phases": phases,
        "timed_out": timed_out,
        "create_s": created_s,
        "wall_s": wall_s,
        "transitions": buckets.get(float("inf"), 0.0),
        "p50_s": histogram_quantile(0.5, buckets),
        "p99_s": histogram_quantile(0.99, buckets),
        "buckets": {str(k): v for k, v in sorted(buckets.items())},
        "external_p50_s": percentile(external, 0.5),
        "external_p99_s": percentile(external, 0.99),
        "external_max_s": max(external) if external else None,
        "external_count": len(external),
        "stored_p50_s": percentile(stored, 0.5),
        "stored_p99_s": percentile(stored, 0.99),
        "stored_max_s": max(stored) if stored else None,
        "controller_manager_throttled_s": throttle_s,
        **proc,
        "operator_requests": own,
        "operator_requests_per_job": sum(own.values()) / n,
        "apiserver_requests": api_total,
        "apiserver_requests_per_job": cluster_requests / n,
        "apiserver_top": dict(sorted(api_delta.items(), key=lambda kv: -kv[1])[:8]),
        "reconcile_errors": sum(v for k, v in errors.items()),
    }


def idle_request_rate(cluster: LocalCluster, seconds: float = 15) -> float:
    before = sum(apiserver_requests(cluster).values())
    time.sleep(seconds)
    after = sum(apiserver_requests(cluster).values())
    return max(0.0, (after - before - 1) / seconds)  # less one for the first /metrics read


# ---------------------------------------------------------------------------------- report
def fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def environment_name(python: Path) -> str:
    """The virtual environment an interpreter belongs to, relative to the repository when inside it."""
    venv = python.absolute().parent.parent
    return str(venv.relative_to(ROOT)) if venv.is_relative_to(ROOT) else str(venv)


def markdown(results: list[dict[str, Any]], command: str, machine: str, notes: list[str]) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {machine}, with:",
        "",
        "```bash",
        command,
        "```",
        "",
        "Each row is one fresh operator process watching one fresh namespace, into which N RLHFJobs are "
        "created at once (8 parallel creates); every stage pod runs for the simulated run-duration, one "
        "precompute shard, so 5 Jobs and 5 pods per RLHFJob. The cluster is the real local control plane "
        "(etcd, kube-apiserver, controller-manager, scheduler) with kwok nodes, on the same cores as the "
        "operator and the benchmark.",
        "",
        "| operator environment | jobs | all Succeeded after | transition p50 / p99 (operator histogram) | external check p50 / p99 / "
        "max, from the Complete condition | same, from the stored status write | controller-manager "
        "throttled | operator peak RSS | operator CPU | operator API requests / job | API server requests / "
        "job (all clients) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        done = r["phases"].get("Succeeded", 0)
        wall = f"{r['wall_s']:.1f} s" + ("" if done == r["jobs"] else f" ({done}/{r['jobs']} Succeeded)")
        lines.append(
            f"| {r['environment']} | {r['jobs']} | {wall} | {fmt(r['p50_s'])} / {fmt(r['p99_s'])} s | "
            f"{fmt(r['external_p50_s'], '.0f')} / {fmt(r['external_p99_s'], '.0f')} / "
            f"{fmt(r['external_max_s'], '.0f')} s | {fmt(r['stored_p50_s'], '.0f')} / "
            f"{fmt(r['stored_p99_s'], '.0f')} / {fmt(r['stored_max_s'], '.0f')} s | "
            f"{r['controller_manager_throttled_s']:.0f} s | {r['hwm_mib']:.0f} MiB | {r['cpu_s']:.1f} s | "
            f"{r['operator_requests_per_job']:.1f} | {r['apiserver_requests_per_job']:.0f} |"
        )
    lines += ["", "Operator requests by verb and resource (whole run):", ""]
    for r in results:
        parts = ", ".join(f"{k} {v:.0f}" for k, v in r["operator_requests"].items())
        lines.append(f"- {r['environment']}, {r['jobs']} jobs: {parts}")
    lines += ["", *notes, ""]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(SECTION + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        following = re.search(r"^## ", text[start + len(SECTION) :], flags=re.MULTILINE)
        end = start + len(SECTION) + following.start() if following else len(text)
        text = text[:start] + section + ("\n" + text[end:] if following else "")
    path.write_text(text.rstrip("\n") + "\n")


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return f"{os.cpu_count()} cores ({model}), {memory_kib / 2**20:.0f} GiB, shared with other work"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, nargs="+", default=[10, 100, 300])
    parser.add_argument("--out", type=Path, help="markdown file whose operator section is (re)written")
    parser.add_argument("--run-duration", default="500ms", help="simulated run time of each stage pod")
    parser.add_argument("--timeout", type=float, default=420, help="seconds to wait for one N")
    parser.add_argument("--stock-nodes", action="store_true", help="do not add GPU capacity")
    parser.add_argument(
        "--controller-qps",
        type=int,
        default=200,
        help="kube-controller-manager --kube-api-qps (burst twice that); 0 keeps its default of 20",
    )
    parser.add_argument(
        "--operator-python",
        type=Path,
        nargs="+",
        default=[Path(sys.executable)],
        help="interpreters to run the operator with, each for every N (see docs/benchmarks.md for an "
        "environment with only the operator image's packages)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    command = ".venv/bin/python bench/bench_operator.py " + " ".join(sys.argv[1:] if argv is None else argv)

    # A terminated bench still stops its cluster (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    cluster = BenchCluster(f"bench-op-{os.getpid()}", workdir / "clusters", args.controller_qps or None)
    results: list[dict[str, Any]] = []
    try:
        started = time.monotonic()
        cluster.up()
        print(f"cluster up in {time.monotonic() - started:.0f}s ({workdir})", flush=True)
        if not args.stock_nodes:
            add_gpu_capacity(cluster)
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        wait_established(cluster.kubectl, "crd", "--all")
        kube_config.load_kube_config(str(cluster.kubeconfig))
        kube = Kube(cluster.kubeconfig)
        idle = idle_request_rate(cluster)
        print(f"idle API server rate: {idle:.1f} requests/s", flush=True)
        for n, python in itertools.product(args.jobs, args.operator_python):
            result = run_once(
                cluster,
                kube,
                n,
                workdir=workdir,
                run_duration=args.run_duration,
                timeout=args.timeout,
                idle_rate=idle,
                python=python,
            )
            result["environment"] = environment_name(python)
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        cluster.down()
    notes = [f"Idle API server rate (subtracted): {idle:.1f} requests/s."]
    section = markdown(results, command, machine(), notes)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.out:
        write_section(args.out, section)
    return 0 if all(r["phases"].get("Succeeded", 0) == r["jobs"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
