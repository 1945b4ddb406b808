"""kairosd: keeps a heterogeneous inference fleet within a QoS target and an hourly budget."""

__version__ = "0.1.0"
