"""Framework for generative model services on Ray Serve, speaking fal's client contract.

This package never names a model: services live in `deployments/`, configuration in `configs/`.
"""
