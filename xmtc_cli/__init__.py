"""xmtc: extreme multi-label text classification with OTSeq2Set."""

__version__ = "0.1.0"
