"""`kubectl rlhf pull JOB [--stage S] DIR`: a job's artifacts (or one stage's, with its TensorBoard
files) into DIR, from the job's storage as the stages wrote it.

- S3 (`storage.s3`): read directly with fsspec/s3fs and the caller's AWS credentials.
- A volume (`storage.volume`): a short-lived pod mounts the claim read-only, in the image, node
  group and security context of one of the job's own stage pods (so it lands where the claim can
  be mounted and passes the namespace's Pod Security), `kubectl exec ... tar` streams the files
  out and the pod is deleted. Members are extracted with tarfile's `data` filter (no absolute
  paths, no links out of DIR).
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

from rlhf_operator.api import artifacts
from rlhf_operator.api.v1alpha1 import RLHFJob, StageName
from rlhf_operator.kubectl_rlhf.kubectl import Kubectl, PluginError
from rlhf_operator.naming import LABEL_JOB_UID
from rlhf_operator.stages import STAGES

Manifest = dict[str, Any]
TENSORBOARD = "tensorboard"
#: What each stage leaves under the job's root (besides tensorboard/<stage slug>/).
STAGE_DIRS = {
    StageName.PRECOMPUTE: artifacts.PRECOMPUTE_DIR,
    StageName.RANKING: artifacts.RANKING_DIR,
    StageName.REWARD_MODEL: artifacts.REWARD_MODEL_DIR,
    StageName.POLICY: artifacts.POLICY_DIR,
    StageName.EVALUATION: artifacts.EVALUATION_DIR,
}
PULLER_LABEL = "app.kubernetes.io/managed-by"
PULLER = "kubectl-rlhf"


def relative_paths(stage: StageName | None) -> list[str]:
    """Paths under the job's root: everything, or one stage's directory and its event files."""
    if stage is None:
        return ["."]
    if stage not in STAGE_DIRS:
        raise PluginError(f"stage {STAGES[stage].slug} leaves no artifacts of its own")
    paths = [STAGE_DIRS[stage], f"{TENSORBOARD}/{STAGES[stage].slug}"]
    return [*paths, artifacts.PROMOTED_DIR] if stage is StageName.POLICY else paths


def job_root(job: Manifest) -> tuple[RLHFJob, str]:
    model = RLHFJob.model_validate(job)
    meta = job["metadata"]
    return model, artifacts.job_root(model.spec.storage, meta["namespace"], meta["name"], meta["uid"])


def pull(kube: Kubectl, job: Manifest, paths: list[str], dest: Path) -> list[Path]:
    """Copies `paths` (relative to the job's root) into `dest`; the files written."""
    model, root = job_root(job)
    dest.mkdir(parents=True, exist_ok=True)
    if model.spec.storage.volume is None:
        return _pull_s3(root, paths, dest)
    return _pull_volume(kube, job, model, root=root, paths=paths, dest=dest)


def _pull_s3(root: str, paths: list[str], dest: Path) -> list[Path]:
    import fsspec

    fs, base = fsspec.core.url_to_fs(root)
    written: list[Path] = []
    for rel in paths:
        source = base if rel == "." else f"{base}/{rel}"
        for path in fs.find(source):
            target = dest / Path(path).relative_to(base)
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))
            written.append(target)
    return written


def puller_pod(job: Manifest, model: RLHFJob, template: Manifest, name: str) -> Manifest:
    """A pod like the stage pod `template` (image, node placement, security) that only mounts the
    job's claim read-only at its mount path and sleeps while `tar` runs in it."""
    volume = model.spec.storage.volume
    assert volume is not None
    spec = template["spec"]
    container = spec["containers"][0]
    mount: Manifest = {"name": "storage", "mountPath": volume.mount_path, "readOnly": True}
    if volume.sub_path:
        mount["subPath"] = volume.sub_path
    keep = (
        "nodeSelector",
        "tolerations",
        "affinity",
        "securityContext",
        "imagePullSecrets",
        "serviceAccountName",
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": job["metadata"]["namespace"],
            "labels": {PULLER_LABEL: PULLER, LABEL_JOB_UID: job["metadata"]["uid"]},
        },
        "spec": {
            **{k: spec[k] for k in keep if k in spec},
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "activeDeadlineSeconds": 3600,
            "containers": [
                {
                    "name": "pull",
                    "image": container["image"],
                    "command": ["sleep", "3600"],
                    "workingDir": volume.mount_path,
                    "volumeMounts": [mount],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "128Mi"},
                        "limits": {"memory": "512Mi"},
                    },
                    **(
                        {"securityContext": container["securityContext"]}
                        if "securityContext" in container
                        else {}
                    ),
                }
            ],
            "volumes": [
                {
                    "name": "storage",
                    "persistentVolumeClaim": {"claimName": volume.claim_name, "readOnly": True},
                }
            ],
        },
    }


def _stage_template(kube: Kubectl, job: Manifest) -> Manifest:
    namespace, uid = job["metadata"]["namespace"], job["metadata"]["uid"]
    jobs = kube.items("jobs.batch", "-l", f"{LABEL_JOB_UID}={uid}", namespace=namespace)
    cpu = [j for j in jobs if not _gpus(j["spec"]["template"])]
    if not (cpu or jobs):
        raise PluginError(
            f"{job['metadata']['name']} has no stage Job left to take an image and placement from "
            "(they go with the job's TTL); copy the files with a pod of your own"
        )
    template: Manifest = (cpu or jobs)[0]["spec"]["template"]
    return template


def _gpus(template: Manifest) -> bool:
    return any(
        "gpu" in k
        for c in template["spec"]["containers"]
        for k in (c.get("resources") or {}).get("limits", {})
    )


def _pull_volume(
    kube: Kubectl, job: Manifest, model: RLHFJob, *, root: str, paths: list[str], dest: Path
) -> list[Path]:
    volume = model.spec.storage.volume
    assert volume is not None
    under = root.removeprefix(volume.mount_path.rstrip("/") + "/")
    wanted = [under if rel == "." else f"{under}/{rel}" for rel in paths]
    name = f"{job['metadata']['name'][:40]}-pull-{uuid.uuid4().hex[:6]}"
    namespace = job["metadata"]["namespace"]
    pod = puller_pod(job, model, _stage_template(kube, job), name)
    kube.run("create", "-f", "-", input=json.dumps(pod), namespace=namespace)
    try:
        _wait_running(kube, name, namespace)
        return _stream_tar(kube, name, namespace, wanted=wanted, under=under, dest=dest)
    finally:
        kube.run("delete", "pod", name, "--wait=false", "--ignore-not-found", namespace=namespace)


def _wait_running(kube: Kubectl, name: str, namespace: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        phase = (kube.get("pod", name, namespace=namespace).get("status") or {}).get("phase")
        if phase == "Running":
            return
        if phase in ("Failed", "Succeeded"):
            raise PluginError(f"the pull pod {name} ended ({phase}) before the copy")
        time.sleep(1)
    raise PluginError(
        f"the pull pod {name} did not start within {timeout_s:.0f}s (kubectl describe pod {name})"
    )


def _stream_tar(
    kube: Kubectl, pod: str, namespace: str, *, wanted: list[str], under: str, dest: Path
) -> list[Path]:
    # Only paths that exist: a stage that has not run has no directory yet.
    script = 'set -- $(for p; do [ -e "$p" ] && echo "$p"; done); [ $# -gt 0 ] && exec tar -cf - "$@"'
    command = kube.command("exec", pod, "--", "sh", "-c", script, "sh", *wanted, namespace=namespace)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    written: list[Path] = []
    try:
        with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
            for member in archive:
                member.name = member.name.removeprefix(under).lstrip("/") or "."
                archive.extract(member, dest, filter="data")
                if member.isfile():
                    written.append(dest / member.name)
    except tarfile.ReadError as err:
        process.wait()
        stderr = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
        if not stderr and process.returncode == 1:
            raise PluginError(f"nothing to pull: none of {', '.join(wanted)} exists on the volume") from err
        raise PluginError(f"copying from the pull pod failed: {stderr or err}") from err
    if process.wait() != 0:
        stderr = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
        raise PluginError(f"copying from the pull pod failed: {stderr}")
    return written
