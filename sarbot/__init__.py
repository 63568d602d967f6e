"""sarbot answers GDPR subject access requests that arrive by email."""

__version__ = "0.1.0"
