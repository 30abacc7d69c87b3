"""The package version and the User-Agent it sends."""

__version__ = "0.1.0"
USER_AGENT = f"firetitan-async/{__version__}"
