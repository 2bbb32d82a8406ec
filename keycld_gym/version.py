"""The package version, recorded in every data set, checkpoint and agent file it writes."""

__version__ = "0.1.0"
