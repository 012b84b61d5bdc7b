"""The version of crystallize-core, in one place: the wheel is built with it."""

__version__ = "0.5.0"
