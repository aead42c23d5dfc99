"""The client side: :class:`Client` (jobs), its per-server connection driver, and
:class:`AdminClient`.
"""
