"""Where each stage reads and writes its artifacts, under a job's artifact root.

The root is a local path (a mounted volume) or an s3:// URI, so paths are joined with "/" and never
with os.path (which would mangle the URI scheme on some platforms and is not what S3 means).
"""

from __future__ import annotations

from rlhf_operator.api.v1alpha1 import StorageSpec

PRECOMPUTE_DIR = "precompute"
RANKING_DIR = "ranking"
REWARD_MODEL_DIR = "reward-model"
POLICY_DIR = "policy"
EVALUATION_DIR = "evaluation"
PROMOTED_DIR = "promoted"
JOBS_DIR = "rlhf-jobs"


def join(root: str, *parts: str) -> str:
    """`root/part/...` for a path or a URI, without doubled slashes."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def storage_base(storage: StorageSpec) -> str:
    """The volume's mount path, else the S3 prefix: what every job on that storage shares."""
    if storage.volume is not None:
        return storage.volume.mount_path
    if storage.s3 is not None:
        return storage.s3.prefix
    raise ValueError("storage must set `volume` or `s3`")  # the API refuses this; hand-built specs may not


def job_root(storage: StorageSpec, namespace: str, name: str, uid: str) -> str:
    """The artifact root of one RLHFJob; the uid keeps a re-created job of the same name apart."""
    return join(storage_base(storage), JOBS_DIR, namespace, name, uid)


def hub_cache(storage: StorageSpec, namespace: str) -> str:
    """Where hf:// sources fetched for the namespace's jobs are kept (`workloads/hub.py`)."""
    return join(storage_base(storage), JOBS_DIR, namespace, ".hub")


def precompute_shard(root: str, index: int, count: int) -> str:
    """Responses of one precompute shard (JSON lines)."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} must be in [0, {count})")
    return join(root, PRECOMPUTE_DIR, f"responses-{index:05d}-of-{count:05d}.jsonl")


def precompute_shards(root: str, count: int) -> list[str]:
    return [precompute_shard(root, i, count) for i in range(count)]


def precompute_dir(root: str) -> str:
    """What precompute reports as `status.artifacts.responses`: the directory of its shards."""
    return join(root, PRECOMPUTE_DIR)


def precompute_manifest(root: str) -> str:
    """Written last by precompute: which shards exist and how many responses each holds."""
    return join(root, PRECOMPUTE_DIR, "manifest.json")


def ranking_pairs(root: str) -> str:
    """Preference pairs (JSON lines: prompt, chosen, rejected)."""
    return join(root, RANKING_DIR, "pairs.jsonl")


def reward_model_dir(root: str) -> str:
    """Trained reward model (Hugging Face directory)."""
    return join(root, REWARD_MODEL_DIR)


def policy_model_dir(root: str) -> str:
    """Trained policy (Hugging Face directory)."""
    return join(root, POLICY_DIR, "model")


def policy_checkpoints_dir(root: str) -> str:
    return join(root, POLICY_DIR, "checkpoints")


def evaluation_report(root: str) -> str:
    return join(root, EVALUATION_DIR, "report.json")


def evaluation_plot(root: str) -> str:
    return join(root, EVALUATION_DIR, "rewards.png")


def promoted_policy_dir(root: str) -> str:
    """The policy that met the evaluation gate, copied: a stable place to deploy from."""
    return join(root, PROMOTED_DIR, "policy")
