"""The job server's I/O: listeners, connections and the poller around the sans-IO state, and
the stores.
"""
