"""The worker side: :class:`Worker` (abilities, slots), its per-server connection driver, and
the job context.
"""
