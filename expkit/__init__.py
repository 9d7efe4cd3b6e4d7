"""expkit: config-driven experiment runner for classification studies."""
__version__ = "0.1.0"
