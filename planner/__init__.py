"""gpubudget's pure planning core: catalogs, memory/speed/cost models and the optimizer.

Imports only the stdlib, pydantic, yaml and itself (DESIGN.md): no clock, no network, no torch.
"""
