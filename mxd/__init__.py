"""mxd: a self-hosted mail server appliance in one daemon."""
__version__ = "0.1.0"
