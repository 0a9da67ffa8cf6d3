"""`rlhf-operator operator`: runs the controller with Kopf (in the cluster or against a kubeconfig)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
import uuid
from typing import Any

import kopf
from prometheus_client import REGISTRY, start_http_server

from rlhf_operator import handlers, kopf_namespaces
from rlhf_operator.config import OperatorConfig
from rlhf_operator.controller import Controller
from rlhf_operator.job_metrics import JobSeriesCollector
from rlhf_operator.kube import Kube, KubeLeaseStore
from rlhf_operator.leader import LeaderElector

log = logging.getLogger(__name__)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Handlers are synchronous (the API client blocks); give them threads.
    settings.execution.max_workers = 16
    # Only watch-event handlers are used: Kopf stores no progress and adds no finalizers.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    controller = handlers.controller_of(memo)
    threading.Thread(target=controller.resync_forever, name="resync", daemon=True).start()
    elector = getattr(memo, "elector", None)
    if isinstance(elector, LeaderElector):
        # Every replica watches (a new leader starts with a full store); only the leader acts.
        controller.is_leader = elector.leading

        # A new leader reconciles everything at once, in a thread of its own: the election thread
        # must keep renewing while that runs.
        def lead() -> None:
            threading.Thread(target=controller.reconcile_all, name="takeover", daemon=True).start()

        election = threading.Thread(
            target=elector.run, args=(memo.stop_election, lead, _leadership_lost), name="leader-election"
        )
        election.daemon = True
        election.start()


def _leadership_lost() -> None:
    """The Lease was not renewed in time: stop acting now, as client-go does, and restart as a standby."""
    log.critical("lost the leader-election Lease; exiting so that only one replica ever acts")
    logging.shutdown()
    os._exit(1)


@kopf.on.probe(id="sweep")
def sweep_alive(memo: kopf.Memo, **_: Any) -> str:
    """Kopf's liveness endpoint fails while this raises: a dead sweep loop restarts the pod."""
    if not handlers.controller_of(memo).alive():
        raise kopf.PermanentError("the periodic sweep has stopped ticking")
    return "ticking"


@kopf.on.cleanup()
def stop(memo: kopf.Memo, **_: Any) -> None:
    handlers.controller_of(memo).stop()
    elector = getattr(memo, "elector", None)
    if isinstance(elector, LeaderElector):
        memo.stop_election.set()
        elector.release()  # a standby takes over within a second instead of waiting out the Lease


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-operator operator", description=__doc__)
    parser.add_argument(
        "--liveness", default="http://0.0.0.0:8081/healthz", help="Kopf liveness endpoint URL"
    )
    args = parser.parse_args(argv)
    config = OperatorConfig.from_env(os.environ)
    if config.log_format == "json":
        # One JSON object a line; records about an RLHFJob carry it under "object" (Kopf's formatter).
        kopf.configure(log_format=kopf.LogFormat.JSON, log_refkey="object")
        logging.getLogger().setLevel(config.log_level)
    else:
        logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Kopf logs every handled watch event at INFO; with many jobs that is most of the operator's work.
    quiet = max(logging.WARNING, logging.getLevelName(config.log_level))
    logging.getLogger("kopf.objects").setLevel(quiet)
    # The HTTP client logs every request at INFO; the metrics count them instead.
    logging.getLogger("httpx2").setLevel(quiet)
    kube = Kube()
    controller = Controller(config, kube)
    memo = kopf.Memo(controller=controller)
    if config.leader_election_namespace:
        leases = KubeLeaseStore(kube.client, config.leader_election_namespace, config.leader_election_lease)
        # The pod's name (HOSTNAME) and a random part: a restarted container is a new candidate.
        identity = f"{os.environ.get('HOSTNAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        memo.elector, memo.stop_election = LeaderElector(leases, identity), threading.Event()
    if config.metrics_port:
        jobs = controller.store
        # Only the leader serves the per-job series: a standby's store is as warm, and two replicas
        # exporting the same jobs would double every sum over them.
        REGISTRY.register(
            JobSeriesCollector(
                lambda: filter(None, map(jobs.job, jobs.job_keys())) if controller.is_leader() else ()
            )
        )
        start_http_server(config.metrics_port)
    kopf_namespaces.install()
    # standalone: Kopf's peering is off (it pauses equal-priority peers; leader.py says why).
    kopf.run(
        standalone=True,
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        liveness_endpoint=args.liveness,
        memo=memo,
    )
    return 0
