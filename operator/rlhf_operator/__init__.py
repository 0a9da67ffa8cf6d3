"""rlhf-operator: runs whole RLHF pipelines as Kubernetes RLHFJob resources."""

__version__ = "0.1.0"
