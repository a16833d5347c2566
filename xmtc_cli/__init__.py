"""xmtc: extreme multi-label text classification with OTSeq2Set."""

__version__ = "0.1.0"

from xmtc_cli.threads import passive_wait

# Before anything imports torch: its OpenMP threads then sleep rather than spin while they wait
# (xmtc_cli/threads.py says why).
passive_wait()
