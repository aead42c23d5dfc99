"""``trio-gearman monitor``: a live dashboard of Gearman job servers, in a browser.

It reads only the admin protocol, so it watches any gearmand-compatible server.

* :mod:`.model`: snapshots, rates, filters and the JSON view, sans-IO;
* :mod:`.poller`: :class:`Poller` reads the servers through
  :class:`~trio_gearman.AdminClient`;
* :mod:`.web`: the Starlette app (:func:`.web.create_app`) and its Hypercorn server;
  it needs the ``monitor`` extra, so it is imported only where it is used.
"""

from .model import Filters as Filters, History as History, Snapshot as Snapshot
from .poller import DEFAULT_INTERVAL as DEFAULT_INTERVAL, Poller as Poller

__all__ = ["DEFAULT_INTERVAL", "Filters", "History", "Poller", "Snapshot"]
