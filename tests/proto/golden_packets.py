"""Packets sent by gearmand 1.1.20+ds, captured byte for byte.

Made by ``python -m tests.proto.capture_golden`` (gearmand started on 127.0.0.1
with ``--job-handle-prefix=H:golden``, spoken to with raw sockets). Do not edit by
hand: capture again.
"""

from __future__ import annotations

from typing import Final

GOLDEN: Final[dict[str, bytes]] = {
    "echo_res": (b"\x00RES\x00\x00\x00\x11\x00\x00\x00\tping\x00pong"),
    "echo_res_empty": b"\x00RES\x00\x00\x00\x11\x00\x00\x00\x00",
    "option_res": (b"\x00RES\x00\x00\x00\x1b\x00\x00\x00\nexceptions"),
    "option_res_upper": (b"\x00RES\x00\x00\x00\x1b\x00\x00\x00\nEXCEPTIONS"),
    "error_unknown_option": (
        b"\x00RES\x00\x00\x00\x13\x00\x00\x005"
        b"UNKNOWN_OPTION\x00Server does not recognize"
        b" given option"
    ),
    "error_invalid_magic": (
        b"\x00RES\x00\x00\x00\x13\x00\x00\x00$INVALID_MAGIC\x00Request magic expected"
    ),
    "error_invalid_command": (
        b"\x00RES\x00\x00\x00\x13\x00\x00\x00$INVALID_COMMAND\x00Command not expected"
    ),
    "error_job_not_found_result": (
        b"\x00RES\x00\x00\x00\x13\x00\x00\x000JOB_NOT_FOUND\x00Job given in work result not found"
    ),
    "error_job_not_found_data": (
        b"\x00RES\x00\x00\x00\x13\x00\x00\x00*JOB_NOT_FOUND\x00Job does not exist on server"
    ),
    "error_job_not_found_exception": (
        b"\x00RES\x00\x00\x00\x13\x00\x00\x00E"
        b"JOB_NOT_FOUND\x00An exception was received "
        b"for a job that does not exist"
    ),
    "status_res_unknown": (
        b"\x00RES\x00\x00\x00\x14\x00\x00\x00\x14H:golden:999\x000\x000\x000\x000"
    ),
    "status_res_unique_unknown": (
        b"\x00RES\x00\x00\x00*\x00\x00\x00\x0enope\x000\x000\x000\x000\x000"
    ),
    "no_job": b"\x00RES\x00\x00\x00\n\x00\x00\x00\x00",
    "job_created": (b"\x00RES\x00\x00\x00\x08\x00\x00\x00\nH:golden:1"),
    "noop": b"\x00RES\x00\x00\x00\x06\x00\x00\x00\x00",
    "status_res_queued": (b"\x00RES\x00\x00\x00\x14\x00\x00\x00\x12H:golden:1\x001\x000\x000\x000"),
    "status_res_unique_queued": (
        b"\x00RES\x00\x00\x00*\x00\x00\x00\x0eu-bg\x001\x000\x000\x000\x000"
    ),
    "job_assign": (b"\x00RES\x00\x00\x00\x0b\x00\x00\x00\x19H:golden:1\x00reverse\x00queued"),
    "status_res_running": (
        b"\x00RES\x00\x00\x00\x14\x00\x00\x00\x12H:golden:1\x001\x001\x007\x009"
    ),
    "status_res_unique_running": (
        b"\x00RES\x00\x00\x00*\x00\x00\x00\x0eu-bg\x001\x001\x007\x009\x000"
    ),
    "status_res_unique_waiting_client": (
        b"\x00RES\x00\x00\x00*\x00\x00\x00\x0eu-fg\x001\x000\x000\x000\x001"
    ),
    "job_assign_uniq": (
        b"\x00RES\x00\x00\x00\x1f\x00\x00\x00\x1dH:golden:2\x00reverse\x00u-fg\x00hello"
    ),
    "work_data": (b"\x00RES\x00\x00\x00\x1c\x00\x00\x00\x19H:golden:2\x00chunk\x00with nul"),
    "work_warning": (b"\x00RES\x00\x00\x00\x1d\x00\x00\x00\x12H:golden:2\x00careful"),
    "work_status": (b"\x00RES\x00\x00\x00\x0c\x00\x00\x00\x0eH:golden:2\x007\x009"),
    "work_complete": (b"\x00RES\x00\x00\x00\r\x00\x00\x00\x10H:golden:2\x00olleh"),
    "job_assign_empty_data": (b"\x00RES\x00\x00\x00\x0b\x00\x00\x00\x13H:golden:3\x00reverse\x00"),
    "work_fail": (b"\x00RES\x00\x00\x00\x0e\x00\x00\x00\nH:golden:3"),
    "work_fail_from_exception": (b"\x00RES\x00\x00\x00\x0e\x00\x00\x00\x0bH:golden:4\x00"),
    "work_exception": (b"\x00RES\x00\x00\x00\x19\x00\x00\x00\x0fH:golden:5\x00boom"),
    "work_fail_worker_nul": (b"\x00RES\x00\x00\x00\x0e\x00\x00\x00\x0bH:golden:6\x00"),
    "job_assign_all": (
        b"\x00RES\x00\x00\x00(\x00\x00\x00%H:golden:7\x00reverse\x00u-red\x00count\x00map me"
    ),
    "job_assign_uniq_from_grab_all": (
        b"\x00RES\x00\x00\x00\x1f\x00\x00\x00\x1fH:golden:8\x00reverse\x00u-plain\x00data"
    ),
}
