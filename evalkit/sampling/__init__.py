"""Samplers beyond plain importance sampling: HMC kernels and annealed importance sampling."""
