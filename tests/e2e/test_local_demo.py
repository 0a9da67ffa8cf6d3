"""End to end: `kubectl apply` of the tiny RLHFJob on the local cluster, every stage a real process.

The cluster runs in executed mode: Kubernetes' own scheduler and Job controller place and track the
pods, the local pod executor runs each pod's real stage program (in place of kubelet and a container
runtime) and the operator runs with the Helm chart's configuration, its metrics scraped every
second. One cluster, one operator and one executor serve the module: the tiny job, the same job
with a two-node policy, then `kubectl rlhf` and the per-job Prometheus series on what they left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from demo import EXAMPLE, follow, make_tiny_assets, prepare_storage, running_pipeline
from localcluster import LocalCluster, wait_established
from rlhf_operator.local_runner import free_port

ROOT = Path(__file__).resolve().parents[2]
NODE_GROUP_OF_STAGE = {
    "precompute": "cpu", "ranking": "cpu", "reward-model": "reward-gpu", "policy": "policy-gpu", "evaluation": "cpu",
}  # fmt: skip
NAMESPACES = ("rlhf-e2e", "rlhf-e2e-2n")


@pytest.fixture(scope="module")
def executed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The local cluster in executed mode with the CRD installed."""
    cluster = LocalCluster("e2e", home=tmp_path_factory.mktemp("clusters"), executed=True)
    cluster.up()
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        wait_established(cluster.kubectl, "crd/rlhfjobs.rlhf-operator.dev")
        yield cluster
    finally:
        cluster.down()


@dataclass
class Pipeline:
    """The running operator and executor; `scrapes` holds (time, /metrics text) once a second."""

    cluster: LocalCluster
    workdir: Path
    metrics_url: str
    scrapes: list[tuple[float, str]] = field(default_factory=list)

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text: str = response.read().decode()
        return text

    def data_dir(self, namespace: str) -> Path:
        return self.workdir / namespace / "data"


@pytest.fixture(scope="module")
def pipeline(executed_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    workdir = tmp_path_factory.mktemp("pipeline")
    port = free_port()
    handle = Pipeline(executed_cluster, workdir, f"http://127.0.0.1:{port}/metrics")
    for namespace in NAMESPACES:
        prepare_storage(executed_cluster, namespace, handle.data_dir(namespace))
        make_tiny_assets(handle.data_dir(namespace))
    stop = threading.Event()

    def scrape_forever() -> None:
        while not stop.wait(1.0):
            try:
                handle.scrapes.append((time.time(), handle.scrape()))
            except OSError:
                continue

    with running_pipeline(executed_cluster, ",".join(NAMESPACES), workdir, metrics_port=port):
        scraper = threading.Thread(target=scrape_forever, name="scraper", daemon=True)
        scraper.start()
        try:
            yield handle
        finally:
            stop.set()
            scraper.join(5)


@dataclass(frozen=True)
class Run:
    namespace: str
    job: dict[str, Any]
    final: dict[str, Any]
    progress: list[dict[str, Any]]
    data: Path
    #: What a test did to the run while it ran (the two-node run: the pod it killed, and when).
    disturbed: dict[str, Any] = field(default_factory=dict)


def run_tiny_job(
    pipeline: Pipeline, namespace: str, job: dict[str, Any], show: Callable[[str], None] | None = None
) -> Run:
    """Applies `job` and follows it to the end; its final status and the policy progress the status
    showed while the policy trained. `show` sees each line of progress the run prints."""
    cluster, name = pipeline.cluster, job["metadata"]["name"]
    progress: list[dict[str, Any]] = []

    def record(line: str) -> None:
        status = json.loads(cluster.kubectl("get", "rlhfjob", name, "-n", namespace, "-o", "json").stdout)
        metrics = status.get("status", {}).get("metrics", {})
        if status["status"].get("currentStage") == "policy" and "policyStep" in metrics:
            progress.append(metrics)
        (show or print)(line)

    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))
    final = follow(cluster, namespace, name, timeout_s=1200, show=record)
    return Run(namespace, job, final, progress, pipeline.data_dir(namespace))


@pytest.fixture(scope="module")
def tiny(pipeline: Pipeline) -> Run:
    return run_tiny_job(pipeline, NAMESPACES[0], yaml.safe_load(EXAMPLE.read_text()))


@pytest.fixture(scope="module")
def two_nodes(pipeline: Pipeline) -> Run:
    """The tiny job with a two-node fsdp policy whose pod 1 is SIGKILLed (as a lost node) once a
    checkpoint is committed while both pods run."""
    cluster, namespace = pipeline.cluster, NAMESPACES[1]
    job = yaml.safe_load(EXAMPLE.read_text())
    job["spec"]["stages"]["policy"].update(nodes=2, distributed={"strategy": "fsdp"}, checkpointInterval=5)
    killed: dict[str, Any] = {}
    jobs_dir = pipeline.data_dir(namespace) / "rlhf-jobs" / namespace

    def kill_pod_1_after_a_checkpoint(line: str) -> None:
        print(time.strftime("%H:%M:%S"), line)  # the restart's cost shows in the log
        committed = list(jobs_dir.glob("tiny/*/policy/checkpoints/step-*/_SUCCESS"))
        if killed or not committed:
            return
        pods = {
            p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p
            for p in policy_pods(cluster, namespace)
        }
        if sorted(pods) != ["0", "1"] or any(p["status"].get("phase") != "Running" for p in pods.values()):
            return
        target = pods["1"]["metadata"]
        killed.update(pids=kill_pod_processes(pipeline.workdir, namespace, target["name"], target["uid"]),
                      uids={p["metadata"]["uid"] for p in pods.values()}, after=sorted(map(str, committed)))  # fmt: skip
        print(
            time.strftime("%H:%M:%S"),
            f"killed pod {target['name']} (processes {killed['pids']}) after {killed['after'][-1]}",
        )

    run = run_tiny_job(pipeline, namespace, job, show=kill_pod_1_after_a_checkpoint)
    run.disturbed.update(killed)
    return run


def stage_pods(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = json.loads(
        cluster.kubectl(
            "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/managed-by=rlhf-operator", "-o", "json"
        ).stdout
    )["items"]
    for pod in pods:
        node = json.loads(cluster.kubectl("get", "node", pod["spec"]["nodeName"], "-o", "json").stdout)
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        assert node["metadata"]["labels"]["eks.amazonaws.com/nodegroup"] == NODE_GROUP_OF_STAGE[component]
    return pods


@pytest.mark.timeout(1500)
def test_tiny_job_runs_for_real_and_the_policy_beats_the_base_model(
    tiny: Run, executed_cluster: LocalCluster
) -> None:
    cluster, namespace, final, progress = executed_cluster, tiny.namespace, tiny.final, tiny.progress

    assert final["phase"] == "Succeeded", final.get("message")
    metrics = final["metrics"]
    assert metrics["rewardModelAccuracy"] >= 0.8
    assert metrics["winRate"] >= 0.7
    assert metrics["policyReward"] > metrics["baseReward"]
    assert {"meanReward", "kl", "policyStep"} <= set(metrics)
    total = yaml.safe_load(EXAMPLE.read_text())["spec"]["stages"]["policy"]["steps"]
    # Progress reached the status while the policy trained, not only from its final result.
    assert any(p["policyStep"] < total for p in progress), progress
    assert final["artifacts"]["evaluationPlot"].startswith("/data/rlhf-jobs/rlhf-e2e/tiny/")
    plot = tiny.data / final["artifacts"]["evaluationPlot"].removeprefix("/data/")
    assert plot.stat().st_size > 1000

    pods = stage_pods(cluster, namespace)
    assert sorted(p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods) == sorted(
        ["precompute", "precompute", "ranking", "reward-model", "policy", "evaluation"]
    )
    policy_pod = next(p for p in pods if p["metadata"]["labels"]["app.kubernetes.io/component"] == "policy")
    assert "RLHF_PROGRESS" in pod_log(cluster, namespace, policy_pod["metadata"]["name"])
    row = cluster.kubectl("get", "rlhfjobs", "-n", namespace, "--no-headers").stdout.split()
    assert row[:3] == ["tiny", "evaluation", "Succeeded"]
    # The example's gate (minWinRate 0.8) is met: Promoted, and the policy copied under promoted/.
    cluster.kubectl("wait", "--for=condition=Promoted", "rlhfjob/tiny", "-n", namespace, "--timeout=60s")
    promoted = tiny.data / final["artifacts"]["promotedPolicy"].removeprefix("/data/")
    assert (promoted / "model.safetensors").exists()


@pytest.mark.timeout(1800)
def test_policy_on_two_nodes_restarts_as_a_group_and_its_fsdp_policy_wins(
    two_nodes: Run, executed_cluster: LocalCluster
) -> None:
    """`nodes: 2`, strategy fsdp: two policy pods of one Indexed Job, each a torchrun agent, meet
    at node 0's rendezvous (the headless Service's name and port, on 127.0.0.1) and train one
    sharded policy. Once a checkpoint is committed, pod 1's processes are killed (SIGKILL, as a lost
    node): the operator replaces both pods (one group restart, on the RLHFJob), the new pods resume
    from the checkpoint, the step counter continues from it, and the pipeline still wins >= 0.9."""
    cluster, namespace, final = executed_cluster, two_nodes.namespace, two_nodes.final
    killed = two_nodes.disturbed
    steps = two_nodes.job["spec"]["stages"]["policy"]["steps"]

    assert killed.get("pids"), "no checkpoint was committed while both pods ran"
    assert final["phase"] == "Succeeded", final.get("message")
    assert final["metrics"]["winRate"] >= 0.9, final["metrics"]
    assert final["metrics"]["policyStep"] == steps
    record = next(s for s in final["stages"] if s["name"] == "policy")
    assert record["restarts"] == 1 and record["restartedJobUid"], record
    events = json.loads(
        cluster.kubectl(
            "get", "events", "-n", namespace, "--field-selector", "reason=GroupRestart", "-o", "json"
        ).stdout
    )["items"]
    assert [e["type"] for e in events] == ["Warning"], events
    # The event names the first failure the operator saw. Both pods end within a moment of the kill:
    # pod 1 (SIGKILLed) or pod 0, whose rank lost its peer mid-collective; which one the API server
    # hears of first is a race between two pods' status updates, so either is right, each with
    # what it says.
    assert re.search(
        r"pod 1 failed|pod 0 failed: .*(remote worker|[Cc]onnection (closed|reset)|peer)",
        events[0]["message"],
        re.S,
    ), events[0]["message"]
    # Both pods were replaced: the two that finished are new ones.
    policy = policy_pods(cluster, namespace)
    by_index = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p for p in policy}
    assert sorted(by_index) == ["0", "1"] and all(p["status"]["phase"] == "Succeeded" for p in policy)
    assert not {p["metadata"]["uid"] for p in policy} & killed["uids"]
    logs = {index: pod_log(cluster, namespace, pod["metadata"]["name"]) for index, pod in by_index.items()}
    # One training run of world size 2: global rank 0 (node 0) reports progress, rank 1 does not;
    # it resumed from the checkpoint and its steps continue from there.
    assert "RLHF_PROGRESS" in logs["0"] and "RLHF_PROGRESS" not in logs["1"], logs["1"][-2000:]
    resumed = re.search(r"resumed from checkpoint step (\d+)", logs["0"])
    assert resumed is not None, logs["0"][-3000:]
    first = json.loads(
        next(ln for ln in logs["0"].splitlines() if "RLHF_PROGRESS " in ln).split("RLHF_PROGRESS ", 1)[1]
    )
    assert first["step"] == int(resumed.group(1)) + 1 and int(resumed.group(1)) >= 5, (
        resumed.group(0),
        first,
    )
    service = json.loads(
        cluster.kubectl(
            "get", "service", "-n", namespace, policy[0]["spec"]["subdomain"], "-o", "json"
        ).stdout
    )
    assert service["spec"]["clusterIP"] == "None"


def pod_log(cluster: LocalCluster, namespace: str, pod: str) -> str:
    """`kubectl logs`, retried: kwok serves logs from a cache of its Logs objects keyed by the last
    resource version its informer saw, and a snapshot taken while that informer's store lags stays
    until the next Logs event. Touching the pod's Logs object makes such an event; a lasting
    failure shows which Logs objects exist."""
    for attempt in range(10):
        result = cluster.kubectl("logs", "-n", namespace, pod, check=False)
        if result.returncode == 0:
            return result.stdout
        cluster.kubectl(
            "annotate", "--overwrite", "-n", namespace, f"logs.kwok.x-k8s.io/{pod}",
            f"test.rlhf-operator.dev/refresh={attempt}", check=False,
        )  # fmt: skip
        time.sleep(2)
    objects = cluster.kubectl("get", "logs.kwok.x-k8s.io", "-n", namespace, "-o", "name", check=False)
    raise AssertionError(
        f"kubectl logs {pod}: {result.stderr.strip()}; kwok Logs objects: {objects.stdout.split()}"
    )


def kubectl_rlhf(cluster: LocalCluster, *args: str, check: bool = True) -> str:
    """`kubectl rlhf ...` as a user runs it: kubectl finds the plugin (`kubectl-rlhf`, installed
    with the package into the environment's bin/) on PATH; the kubeconfig comes from KUBECONFIG."""
    env = dict(cluster.env(), KUBECONFIG=str(cluster.kubeconfig))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    result = subprocess.run(
        [str(cluster.bin / "kubectl"), "rlhf", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl rlhf {' '.join(args)}: {result.stderr}")
    return result.stdout if check else result.stderr


@pytest.mark.timeout(600)
def test_kubectl_rlhf_status_logs_pull_compare_and_wait(
    tiny: Run, two_nodes: Run, pipeline: Pipeline, tmp_path: Path
) -> None:
    cluster = pipeline.cluster
    assert "kubectl-rlhf" in kubectl_rlhf(cluster, "--help")

    status = kubectl_rlhf(cluster, "status", "tiny", "-n", tiny.namespace)
    assert status.splitlines()[0].startswith(f"RLHFJob {tiny.namespace}/tiny: Succeeded (stage evaluation, ")
    assert status.count("[####################] 100%") == 5, status
    # One metric a line, its value after the name column (as wide as the longest name shown).
    assert re.search(rf"^  winRate +{tiny.final['metrics']['winRate']:.4g}$", status, re.M), status
    assert "Promoted  True   GateMet" in status and "GPU-hours:" in status

    policy_log = kubectl_rlhf(cluster, "logs", f"{tiny.namespace}/tiny", "--stage", "policy")
    assert "RLHF_PROGRESS" in policy_log
    both = kubectl_rlhf(cluster, "logs", f"{two_nodes.namespace}/tiny", "--stage", "policy", "--all")
    ranks = {line.split("]")[0] + "]" for line in both.splitlines() if line.startswith("[rank ")}
    assert ranks == {"[rank 0]", "[rank 1]"}, both[-2000:]
    assert "RLHF_PROGRESS" not in "".join(line for line in both.splitlines() if line.startswith("[rank 1]"))
    assert "has no pod of rank 3" in kubectl_rlhf(
        cluster, "logs", "tiny", "-n", tiny.namespace, "--stage", "policy", "--rank", "3", check=False
    )

    out = tmp_path / "pulled"
    said = kubectl_rlhf(cluster, "pull", "tiny", "-n", tiny.namespace, "--stage", "evaluation", str(out))
    root = tiny.final["artifacts"]["evaluationReport"].removeprefix("/data/").rsplit("/evaluation/", 1)[0]
    source = tiny.data / root
    report = out / "evaluation" / "report.json"
    assert report.read_bytes() == (source / "evaluation" / "report.json").read_bytes(), said
    assert (out / "tensorboard" / "evaluation").is_dir() and not (out / "policy").exists()
    assert _pull_pods_gone(cluster, tiny.namespace)

    png = tmp_path / "compare.png"
    table = kubectl_rlhf(
        cluster, "compare", f"{tiny.namespace}/tiny", f"{two_nodes.namespace}/tiny", "--out", str(png)
    )
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.startswith("rlhf-e2e")}
    assert set(rows) == {f"{tiny.namespace}/tiny", f"{two_nodes.namespace}/tiny"}, table
    assert all(row[1] == "Succeeded" and row[-1] != "-" and row[-2] != "-" for row in rows.values()), table
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    assert "condition met: Promoted" in kubectl_rlhf(
        cluster, "wait", "tiny", "-n", tiny.namespace, "--for", "Promoted", "--timeout", "30"
    )
    refused = kubectl_rlhf(
        cluster, "wait", "tiny", "-n", tiny.namespace, "--for", "Failed", "--timeout", "5", check=False
    )
    assert "tiny finished without Failed" in refused or "timed out" in refused, refused


def _pull_pods_gone(cluster: LocalCluster, namespace: str) -> bool:
    def gone() -> bool:
        return not cluster.kubectl(
            "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/managed-by=kubectl-rlhf", "-o", "name"
        ).stdout.strip()

    deadline = time.monotonic() + 60
    while not gone():
        assert time.monotonic() < deadline, "the pull pod was not deleted"
        time.sleep(1)
    return True


def series(text: str, name: str, **labels: str) -> list[float]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


def test_per_job_series_follow_the_run_and_go_with_the_job(
    tiny: Run, two_nodes: Run, pipeline: Pipeline
) -> None:
    """Scraped from the running operator once a second while the tiny job ran: the policy's step and
    GPU-seconds grew while it trained, the final scrape has the evaluation's win rate, and deleting
    a job removes its series."""
    job = {"namespace": tiny.namespace, "rlhfjob": "tiny"}
    steps = [v for _, text in pipeline.scrapes for v in series(text, "rlhf_job_policy_step", **job)]
    running = [
        v
        for _, text in pipeline.scrapes
        for v in series(text, "rlhf_job_stage_state", **job, stage="policy", state="Running")
    ]
    assert steps and steps == sorted(steps) and len(set(steps)) >= 2, steps
    assert 1.0 in running  # seen while it ran
    last = pipeline.scrape()
    assert series(last, "rlhf_job_win_rate", **job) == [tiny.final["metrics"]["winRate"]]
    assert series(last, "rlhf_job_phase", **job, phase="Succeeded") == [1.0]
    gpu = series(last, "rlhf_job_gpu_seconds_total", **job, stage="policy")
    assert gpu == [
        float(next(s for s in tiny.final["stages"] if s["name"] == "policy")["usage"]["gpuSeconds"])
    ]
    assert series(last, "rlhf_job_guardrail_trips_total", **job) == [0.0]
    if os.environ.get("RLHF_SAVE_SERIES"):  # the real series behind docs/images/dashboard.png
        Path(os.environ["RLHF_SAVE_SERIES"]).write_text(json.dumps(pipeline.scrapes))

    other = {"namespace": two_nodes.namespace, "rlhfjob": "tiny"}
    assert series(last, "rlhf_job_phase", **other, phase="Succeeded") == [1.0]
    pipeline.cluster.kubectl("delete", "rlhfjob", "tiny", "-n", two_nodes.namespace, "--wait=true")

    def gone() -> bool:
        text = pipeline.scrape()
        return not series(text, "rlhf_job_phase", **other) and bool(series(text, "rlhf_job_phase", **job))

    deadline = time.monotonic() + 60
    while not gone():
        assert time.monotonic() < deadline, "the deleted job's series are still served"
        time.sleep(1)


def test_the_dashboard_renders_from_the_runs_series(tiny: Run, pipeline: Pipeline, tmp_path: Path) -> None:
    """Every panel of the chart's dashboard, its PromQL evaluated by a real Prometheus over the
    series scraped during the run (hack/dashboard.py), has data, but the alerts panel (nothing
    failed); headless Chromium draws it."""
    from dashboard import panel_queries, render

    out = tmp_path / "dashboard.png"
    results = render(pipeline.scrapes, out)
    dashboard = json.loads(
        (ROOT / "charts" / "rlhf-operator" / "files" / "dashboards" / "rlhf-jobs.json").read_text()
    )
    titles = [panel["title"] for panel, _ in panel_queries(dashboard)]
    empty = {title for title, result in zip(titles, results, strict=True) if not result}
    assert empty == {"Waiting, guardrail trips, failed"}, empty
    reward = results[titles.index("Mean reward (policy)")]
    points = [
        float(v) for series in reward if series["metric"]["rlhfjob"] == "tiny" for _, v in series["values"]
    ]
    assert len(set(points)) >= 2  # the reward moved while the policy trained, as the status showed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 30_000


def policy_pods(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    return [
        p
        for p in stage_pods(cluster, namespace)
        if p["metadata"]["labels"]["app.kubernetes.io/component"] == "policy"
    ]


def kill_pod_processes(workdir: Path, namespace: str, name: str, uid: str) -> list[int]:
    """SIGKILLs the process group the local pod executor started for the pod (its container's
    processes: the torchrun agent and its worker), found by their working directory, the pod's."""
    pod_dir = (workdir / "executor" / "pods" / f"{namespace}_{name}_{uid[:8]}").resolve()
    leaders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if Path(os.readlink(proc / "cwd")).resolve() == pod_dir and os.getpgid(int(proc.name)) == int(
                proc.name
            ):
                leaders.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    for pid in leaders:
        os.killpg(pid, signal.SIGKILL)
    return leaders
