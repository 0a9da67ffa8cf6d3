"""Local pod executor: stands in for kubelet + container runtime on the simulated nodes.

kwok simulates nodes but runs no containers. This development tool watches the pods bound to the
local cluster's nodes and runs each pod's container command as a local process, the way a kubelet
would run it in a container:

- the image is mapped to the local Python environment (`python`, `torchrun` come from it);
- the pod's environment is resolved (values, fieldRefs, `$(VAR)` expansion in the command);
- the pods share the host's network: the DNS names and ports of a pod's headless Service (its
  `subdomain`, e.g. a torchrun rendezvous) become 127.0.0.1 and a free local port (`podnetwork`);
- volumes are materialised: ConfigMaps and Secrets as files, a PersistentVolumeClaim as the
  hostPath of its bound PersistentVolume, emptyDirs as fresh directories. Processes see local
  paths, so every container path under a mount is rewritten in the command, the environment and
  the JSON/YAML files of ConfigMaps (this is how it "mounts" without root);
- the outcome goes back to the API as a kubelet reports it: Running, then Succeeded or Failed with
  the exit code and the termination message (the file at terminationMessagePath, else the log tail
  when the policy is FallbackToLogsOnError);
- logs are kept in CRI format and a kwok `Logs` object points the node's log endpoint at them, so
  `kubectl logs` works; a kwok `Exec` object runs `kubectl exec` commands as local processes in the
  container's workingDir as mounted here (the pod's directory without one), so relative paths work
  (`kubectl rlhf pull` runs `tar` that way).

It runs a pod's single container; init containers, probes other than an HTTP readiness probe,
resource limits, users and security contexts are not enforced. Use it on the local cluster started
in executed mode (`LocalCluster(..., executed=True)`), where kwok leaves pods to it.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from podlocal import (
    Manifest,
    copy_to_cri_log,
    cri_text,
    environment,
    expand,
    now,
    remap_config_files,
    remap_strings,
    unmap_paths,
    write_files,
)
from podnetwork import LoopbackNetwork

log = logging.getLogger("podexecutor")
TERMINATION_MESSAGE_LIMIT = 4096
FALLBACK_LOG_LINES = 80


@dataclass
class RunningPod:
    namespace: str
    name: str
    uid: str
    process: subprocess.Popen[bytes]
    log_file: Path
    termination_file: Path
    fallback_to_logs: bool
    started_at: str
    mounts: dict[str, str] = field(default_factory=dict)
    readiness_url: str | None = None
    ready: bool = False
    stopping: bool = False
    pumps: list[threading.Thread] = field(default_factory=list)


class PodExecutor:
    def __init__(self, api: client.ApiClient, workdir: Path, python_bin: Path) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.workdir = workdir
        self.bin_dir = python_bin.parent
        self.python = python_bin
        self.running: dict[str, RunningPod] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.network = LoopbackNetwork()

    # ------------------------------------------------------------------------------ main loop
    def run(self) -> None:
        threading.Thread(target=self._reap_forever, name="reaper", daemon=True).start()
        while not self.stop_event.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(self.core.list_pod_for_all_namespaces, timeout_seconds=5):
                    if self.stop_event.is_set():
                        stream.stop()
                        break
                    self._handle(
                        event["type"], client.ApiClient().sanitize_for_serialization(event["object"])
                    )
            except Exception as err:  # the watch reconnects; a bad pod must not stop the others
                log.warning("pod watch interrupted: %s", err)
                time.sleep(1)

    def stop(self) -> None:
        self.stop_event.set()
        with self.lock:
            pods = list(self.running.values())
        for running in pods:
            self._terminate(running)

    def _handle(self, kind: str, pod: Manifest) -> None:
        meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
        uid = meta["uid"]
        with self.lock:
            running = self.running.get(uid)
        if kind == "DELETED" or meta.get("deletionTimestamp"):
            if running:
                self._terminate(running)
            return
        if running or not spec.get("nodeName") or status.get("phase") not in (None, "Pending"):
            return
        try:
            self._start(pod)
        except Exception as err:
            log.exception("could not start pod %s/%s", meta["namespace"], meta["name"])
            self._report_finished(
                meta["namespace"],
                meta["name"],
                pod,
                128,
                reason="StartError",
                message=str(err)[:1024],
                started=now(),
            )

    # ------------------------------------------------------------------------------ start
    def _start(self, pod: Manifest) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        namespace, name = meta["namespace"], meta["name"]
        container = spec["containers"][0]
        pod_dir = self.workdir / "pods" / f"{namespace}_{name}_{meta['uid'][:8]}"
        if pod_dir.exists():
            shutil.rmtree(pod_dir)
        pod_dir.mkdir(parents=True)
        mounts = self._mount_volumes(pod, container, pod_dir)
        termination_path = container.get("terminationMessagePath") or "/dev/termination-log"
        termination_file = pod_dir / "termination-log"
        termination_file.touch()
        mounts[termination_path] = str(termination_file)
        remap_config_files(pod_dir, mounts)

        env = self._on_loopback(pod, environment(pod, container, mounts, self.bin_dir))
        command = [
            expand(part, env) for part in (container.get("command") or []) + (container.get("args") or [])
        ]
        if not command:
            raise ValueError(
                "the container has no command; the local executor cannot run an image's entrypoint"
            )
        command = [remap_strings(part, mounts) for part in command]
        if (self.bin_dir / command[0]).exists():
            command[0] = str(self.bin_dir / command[0])
        log_file = self.workdir / "logs" / f"{namespace}_{name}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text("")
        process = subprocess.Popen(
            command, env=env, cwd=str(pod_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        readiness = (container.get("readinessProbe") or {}).get("httpGet")
        readiness_url = None
        if readiness:
            port = readiness["port"]
            if isinstance(port, str):
                port = next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == port)
            readiness_url = f"http://127.0.0.1:{port}{readiness.get('path', '/')}"
        running = RunningPod(
            namespace=namespace, name=name, uid=meta["uid"], process=process, log_file=log_file,
            termination_file=termination_file,
            fallback_to_logs=container.get("terminationMessagePolicy") == "FallbackToLogsOnError",
            started_at=now(), mounts=mounts, readiness_url=readiness_url, ready=readiness_url is None,
        )  # fmt: skip
        for stream_name, stream in (("stdout", process.stdout), ("stderr", process.stderr)):
            pump = threading.Thread(target=copy_to_cri_log, args=(stream, stream_name, log_file), daemon=True)
            pump.start()
            running.pumps.append(pump)
        with self.lock:
            self.running[meta["uid"]] = running
        self._register_logs(pod, container["name"], log_file)
        working_dir = container.get("workingDir")
        self._register_exec(
            pod, container["name"], remap_strings(working_dir, mounts) if working_dir else pod_dir
        )
        self._report_running(running, pod)
        log.info("started %s/%s: %s", namespace, name, " ".join(command))

    def _mount_volumes(self, pod: Manifest, container: Manifest, pod_dir: Path) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        local: dict[str, Path] = {}
        for volume in pod["spec"].get("volumes") or []:
            target = pod_dir / "volumes" / volume["name"]
            if "configMap" in volume:
                data = self.core.read_namespaced_config_map(volume["configMap"]["name"], namespace).data or {}
                write_files(target, data)
            elif "secret" in volume:
                secret = self.core.read_namespaced_secret(volume["secret"]["secretName"], namespace)
                write_files(target, {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()})
            elif "persistentVolumeClaim" in volume:
                claim = self.core.read_namespaced_persistent_volume_claim(
                    volume["persistentVolumeClaim"]["claimName"], namespace
                )
                pv = self.core.read_persistent_volume(claim.spec.volume_name)
                if not pv.spec.host_path:
                    raise ValueError(
                        f"volume {pv.metadata.name} is not a hostPath volume; the executor can't mount it"
                    )
                target = Path(pv.spec.host_path.path)
                target.mkdir(parents=True, exist_ok=True)
            else:  # emptyDir and anything else: a fresh directory
                target.mkdir(parents=True, exist_ok=True)
            local[volume["name"]] = target
        mounts = {}
        for mount in container.get("volumeMounts") or []:
            source = local[mount["name"]]
            if mount.get("subPath"):
                source = source / mount["subPath"]
                source.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = str(source)
        return mounts

    def _on_loopback(self, pod: Manifest, env: dict[str, str]) -> dict[str, str]:
        """The environment with the pod's headless-Service host names and ports on loopback."""
        namespace, subdomain = pod["metadata"]["namespace"], pod["spec"].get("subdomain")
        if not subdomain:
            return env
        try:
            service = self.core.read_namespaced_service(subdomain, namespace)
        except ApiException as err:
            if err.status != 404:
                raise
            log.warning(
                "pod %s names subdomain %s but no such Service exists", pod["metadata"]["name"], subdomain
            )
            return env
        ports = {
            p.port: self.network.local_port(namespace, service.metadata.uid, p.port)
            for p in service.spec.ports or []
        }
        return self.network.pod_environment(env, namespace, subdomain, ports)

    def _register_logs(self, pod: Manifest, container: str, log_file: Path) -> None:
        spec = {"logs": [{"containers": [container], "logsFile": str(log_file), "follow": True}]}
        self._register_kwok(pod, "Logs", spec)

    def _register_exec(self, pod: Manifest, container: str, work_dir: str | Path) -> None:
        self._register_kwok(
            pod, "Exec", {"execs": [{"containers": [container], "local": {"workDir": str(work_dir)}}]}
        )

    def _register_kwok(self, pod: Manifest, kind: str, spec: Manifest) -> None:
        """A kwok per-pod object (Logs, Exec) owned by the pod, so it goes with it."""
        meta = pod["metadata"]
        body = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": kind,
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}
                ],
            },
            "spec": spec,
        }
        try:
            self.custom.create_namespaced_custom_object(
                "kwok.x-k8s.io",
                "v1alpha1",
                meta["namespace"],
                kind.lower() + ("" if kind == "Logs" else "s"),
                body,
            )
        except ApiException as err:
            if err.status != 409:
                log.warning("kubectl %s will not work for %s: %s", kind.lower(), meta["name"], err.reason)

    # ------------------------------------------------------------------------------ status
    def _report_running(self, running: RunningPod, pod: Manifest) -> None:
        container = pod["spec"]["containers"][0]
        ready = "True" if running.ready else "False"
        status = {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": running.started_at,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": running.started_at},
                {"type": "Initialized", "status": "True", "lastTransitionTime": running.started_at},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now()},
                {"type": "Ready", "status": ready, "lastTransitionTime": now()},
            ],
            "containerStatuses": [{
                "name": container["name"], "image": container["image"], "imageID": "", "ready": running.ready,
                "restartCount": 0, "started": True, "state": {"running": {"startedAt": running.started_at}},
            }],
        }  # fmt: skip
        self._patch_status(running.namespace, running.name, status)

    def _report_finished(
        self,
        namespace: str,
        name: str,
        pod: Manifest | None,
        code: int,
        *,
        reason: str,
        message: str,
        started: str,
    ) -> None:
        finished = now()
        phase = "Succeeded" if code == 0 else "Failed"
        container = (pod or {}).get("spec", {}).get("containers", [{"name": "stage", "image": ""}])[0]
        status = {
            "phase": phase,
            "conditions": [
                {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished},
                {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished},
            ],
            "containerStatuses": [{
                "name": container["name"], "image": container.get("image", ""), "imageID": "", "ready": False,
                "restartCount": 0, "started": False,
                "state": {"terminated": {"exitCode": code, "reason": reason, "message": message,
                                         "startedAt": started, "finishedAt": finished}},
            }],
        }  # fmt: skip
        self._patch_status(namespace, name, status)

    def _patch_status(self, namespace: str, name: str, status: Manifest) -> None:
        try:
            self.core.patch_namespaced_pod_status(name, namespace, {"status": status})
        except ApiException as err:
            if err.status != 404:
                log.warning("could not report %s/%s: %s", namespace, name, err.reason)

    # ------------------------------------------------------------------------------ reaping
    def _reap_forever(self) -> None:
        while not self.stop_event.wait(0.2):
            with self.lock:
                pods = list(self.running.values())
            for running in pods:
                code = running.process.poll()
                if code is None:
                    self._probe(running)
                    continue
                for pump in running.pumps:
                    pump.join(5)
                with self.lock:
                    self.running.pop(running.uid, None)
                if running.stopping:
                    continue
                self._finish(running, code)

    def _probe(self, running: RunningPod) -> None:
        if running.ready or not running.readiness_url:
            return
        try:
            with urllib.request.urlopen(running.readiness_url, timeout=1) as response:
                ready = response.status == 200
        except OSError:
            ready = False
        if ready:
            running.ready = True
            pod = self.core.read_namespaced_pod(running.name, running.namespace)
            self._report_running(running, client.ApiClient().sanitize_for_serialization(pod))

    def _finish(self, running: RunningPod, code: int) -> None:
        # A signal shows as a negative return code; a container runtime reports 128 + signal.
        exit_code = 128 - code if code < 0 else code
        message = running.termination_file.read_text(errors="replace")[:TERMINATION_MESSAGE_LIMIT].strip()
        if not message and exit_code != 0 and running.fallback_to_logs:
            lines = [cri_text(line) for line in running.log_file.read_text(errors="replace").splitlines()]
            message = "\n".join(lines[-FALLBACK_LOG_LINES:])[-TERMINATION_MESSAGE_LIMIT:]
        message = unmap_paths(message, running.mounts)
        reason = "Completed" if exit_code == 0 else ("OOMKilled" if exit_code == 137 else "Error")
        log.info("%s/%s exited with %d", running.namespace, running.name, exit_code)
        try:
            pod = client.ApiClient().sanitize_for_serialization(
                self.core.read_namespaced_pod(running.name, running.namespace)
            )
        except ApiException:
            return
        self._report_finished(
            running.namespace,
            running.name,
            pod,
            exit_code,
            reason=reason,
            message=message,
            started=running.started_at,
        )

    def _terminate(self, running: RunningPod, grace_s: float = 10) -> None:
        running.stopping = True
        if running.process.poll() is not None:
            return
        try:
            os.killpg(running.process.pid, signal.SIGTERM)
            running.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(running.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument(
        "--python", default=sys.executable, type=Path, help="the Python that stands in for images"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s executor %(message)s")
    api = config.new_client_from_config(config_file=args.kubeconfig)
    executor = PodExecutor(api, args.workdir, args.python)
    signal.signal(signal.SIGTERM, lambda *_: executor.stop_event.set())
    try:
        executor.run()
    finally:
        executor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
