"""The two commands: ``trio-gearmand`` (the job server) and ``trio-gearman`` (client, worker
and admin tools).
"""
