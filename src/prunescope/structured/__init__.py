"""Structured pruning: coupled channel groups (Torch-Pruning), their masking, importance and removal."""
