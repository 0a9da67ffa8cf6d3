"""`kubectl rlhf`: a kubectl plugin for RLHFJobs (status, logs, pull, compare, wait).

kubectl runs `kubectl-rlhf` from PATH (installed with the package). The plugin talks to the cluster
through kubectl itself, so the user's kubeconfig, context, credentials plugins and `-n` all apply
as they do to kubectl; what it shows is computed by pure functions tested without a cluster.
"""
