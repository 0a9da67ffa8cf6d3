"""`helm test` check: the RLHFJob CRD is served, the API server accepts a valid RLHFJob and refuses
an invalid one (server-side dry runs: nothing is created), and the operator's liveness endpoint
answers.

Runs in the operator image (Python + lightkube, the operator's own client; the image has no other)
as a ServiceAccount that may only `get` the RLHFJob CRD and `create` RLHFJobs in the release's
namespace (dry runs need the create permission). Settings come from the environment: CRD_NAME,
CRD_VERSION, HEALTH_URL, TIMEOUT_SECONDS, SAMPLE_RLHFJOB (JSON), NAMESPACE.
"""

import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable

from lightkube import ApiError, Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition

RLHFJob = create_namespaced_resource("rlhf-operator.dev", "v1alpha1", "RLHFJob", "rlhfjobs")


def crd_problem(client: Client, name: str, version: str) -> str | None:
    crd = client.get(CustomResourceDefinition, name)
    conditions = {c.type: c.status for c in ((crd.status and crd.status.conditions) or [])}
    if conditions.get("Established") != "True":
        return f"CRD {name} is not Established: {conditions}"
    served = [v.name for v in crd.spec.versions if v.served]
    if version not in served:
        return f"CRD {name} does not serve {version} (served: {served})"
    return None


def dry_run_problem(client: Client, sample: dict[str, object], namespace: str) -> str | None:
    """The sample must be accepted, and the same sample without spec.baseModel refused."""
    job = RLHFJob(sample)
    client.create(job, namespace=namespace, dry_run=True)
    broken = json.loads(json.dumps(sample))
    del broken["spec"]["baseModel"]
    try:
        client.create(RLHFJob(broken), namespace=namespace, dry_run=True)
    except ApiError as error:
        if error.status.code == 422:
            return None
        raise
    return "an RLHFJob without spec.baseModel was accepted: the CRD's schema is not enforced"


def health_problem(url: str) -> str | None:
    with urllib.request.urlopen(url, timeout=5) as response:
        if response.status != 200:
            return f"{url} answered HTTP {response.status}"
    return None


def main() -> int:
    client = Client()  # in-cluster service account, else $KUBECONFIG
    name = os.environ.get("CRD_NAME", "rlhfjobs.rlhf-operator.dev")
    version = os.environ.get("CRD_VERSION", "v1alpha1")
    url = os.environ["HEALTH_URL"]
    deadline = time.monotonic() + float(os.environ.get("TIMEOUT_SECONDS", "120"))
    sample = json.loads(os.environ["SAMPLE_RLHFJOB"])
    namespace = os.environ["NAMESPACE"]
    checks: dict[str, Callable[[], str | None]] = {
        "crd": lambda: crd_problem(client, name, version),
        "dry-run": lambda: dry_run_problem(client, sample, namespace),
        "liveness": lambda: health_problem(url),
    }
    while True:
        problems: dict[str, str] = {}
        for what, check in checks.items():
            try:
                problem = check()
            except Exception as error:
                problem = f"{type(error).__name__}: {error}"
            if problem:
                problems[what] = problem
        if not problems:
            print(
                f"ok: CRD {name} serves {version}; a valid RLHFJob passes a server-side dry run in "
                f"{namespace} and an invalid one is refused; {url} answered 200"
            )
            return 0
        if time.monotonic() > deadline:
            for what, problem in problems.items():
                print(f"FAILED {what}: {problem}", file=sys.stderr)
            return 1
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
