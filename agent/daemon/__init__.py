"""The agent daemon (``mailpath agent run|once|status``): diagnosis rounds over configured
targets on a schedule, every finding written to a local spool before any delivery is tried,
delivery to the collector and other sinks, and metrics.

:mod:`.config` the configuration (TOML + environment), :mod:`.rounds` one round and what of it
is reported, :mod:`.runner` the daemon loop and its signals, :mod:`.metrics` the Prometheus
metrics, :mod:`.spool` the SQLite spool, :mod:`.delivery` the sinks.
"""
