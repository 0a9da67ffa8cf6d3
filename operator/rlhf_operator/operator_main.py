"""`rlhf-operator operator`: runs the controller with Kopf (in the cluster or against a kubeconfig)."""

from __future__ import annotations

import argparse
import logging
import os
import threading
from typing import Any

import kopf
from prometheus_client import REGISTRY, start_http_server

from rlhf_operator import handlers
from rlhf_operator.config import OperatorConfig
from rlhf_operator.controller import Controller
from rlhf_operator.job_metrics import JobSeriesCollector
from rlhf_operator.kube import Kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Handlers are synchronous (the API client blocks); give them threads.
    settings.execution.max_workers = 16
    # Only watch-event handlers are used: Kopf stores no progress and adds no finalizers.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    controller = handlers.controller_of(memo)
    threading.Thread(target=controller.resync_forever, name="resync", daemon=True).start()


@kopf.on.probe(id="sweep")
def sweep_alive(memo: kopf.Memo, **_: Any) -> str:
    """Kopf's liveness endpoint fails while this raises: a dead sweep loop restarts the pod."""
    if not handlers.controller_of(memo).alive():
        raise kopf.PermanentError("the periodic sweep has stopped ticking")
    return "ticking"


@kopf.on.cleanup()
def stop(memo: kopf.Memo, **_: Any) -> None:
    handlers.controller_of(memo).stop()


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
    controller = Controller(config, Kube())
    if config.metrics_port:
        store = controller.store
        REGISTRY.register(JobSeriesCollector(lambda: filter(None, map(store.job, store.job_keys()))))
        start_http_server(config.metrics_port)
    kopf.run(
        standalone=True,
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(controller=controller),
    )
    return 0
