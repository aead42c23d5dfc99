"""The job server as a sans-IO state machine: model, job table, packet dispatch and admin
commands.
"""
