"""The RLHFJob API: models (v1alpha1), the stage config, the artifact layout and the CRD generator."""
