"""The stage programs that run inside the RLHFJob pods (`python -m rlhf_operator.workloads <stage>`)."""
