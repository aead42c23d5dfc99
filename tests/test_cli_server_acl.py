"""``trio-gearmand --acl FILE`` and ``--admin-from-anywhere``: the file, the process, gearadmin."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
import trio

from trio_gearman import Acl, AclRule
from trio_gearman._cli.server import main, parse_options
from trio_gearman._proto._packets import CanDo, Error, JobCreated, SubmitJob

from .test_cli_server import trio_gearmand
from .test_server_acl import Peer

GOOD = """\
# Workers on 127.0.0.2 may register anything; everybody on the loopback may submit.
[[rule]]
name = "workers"
address = "127.0.0.2"
register = ["*"]

[[rule]]
address = "127.0.0.0/8"
submit = ["*"]
"""


def acl_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "acl.toml"
    path.write_text(text)
    return str(path)


def test_the_acl_file_is_read_into_rules(tmp_path: Path) -> None:
    options = parse_options(["--acl", acl_file(tmp_path, GOOD)])
    assert isinstance(options.acl, Acl)
    assert options.acl.rules == (
        AclRule(address="127.0.0.2", register=("*",), name="workers"),
        AclRule(address="127.0.0.0/8", submit=("*",), name="rule 2"),
    )
    assert parse_options([]).acl is None
    assert parse_options(["--admin-from-anywhere"]).admin_from_anywhere


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[rule]]\naddress = "10.0.0.0/8"\nsubmit = [resize]\n',
            "acl.toml: Invalid value (at line 3, column",
        ),
        (
            '[[rule]]\naddress = "10.0.0.0/8"\n\n[[rule]]\naddress = "10.0.0.1/8"\n',
            "acl.toml: rule 2 (line 4): address '10.0.0.1/8' is not a network (such as "
            "10.0.0.0/8): 10.0.0.1/8 has host bits set",
        ),
        (
            '[[rule]]\ncertificate = "w*"\nregister = "resize_*"\n',
            "acl.toml: rule 1 (line 1): 'register' must be a list of function name patterns",
        ),
        ('[[rule]]\nsubmit = ["*"]\n', "acl.toml: rule 1 (line 1): a rule needs 'certificate'"),
        ('[rule]\naddress = "*"\n', "acl.toml: 'rule' must be an array of tables"),
        ('[[rules]]\naddress = "*"\n', "acl.toml: unknown key 'rules' at the top level"),
    ],
)
def test_a_bad_acl_file_exits_2_naming_the_file_line_and_problem(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = acl_file(tmp_path, text)
    assert main(["--acl", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"trio-gearmand: error: {tmp_path}/{message}"), err
    assert "Traceback" not in err


def test_an_unreadable_or_binary_acl_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--acl", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read the ACL file" in capsys.readouterr().err
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[[rule]]")
    assert main(["--acl", str(binary)]) == 2
    assert f"{binary}: not UTF-8 text (invalid start byte at byte 0)" in capsys.readouterr().err


def test_admin_from_anywhere_and_an_acl_do_not_go_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--acl", acl_file(tmp_path, GOOD), "--admin-from-anywhere"]) == 2
    assert "--admin-from-anywhere and --acl: with --acl, grant admin in the file" in (
        capsys.readouterr().err
    )


async def _connect(port: int, source: str) -> Peer:
    return Peer(await anyio.connect_tcp("127.0.0.1", port, local_host=source))


async def test_a_refused_can_do_gets_an_error_while_other_clients_keep_working(
    tmp_path: Path,
) -> None:
    args = ["-L", "127.0.0.1", "-p", "0", "--job-handle-prefix", "H:acl", "--log-format", "json"]
    args.append("--acl")
    async with trio_gearmand([*args, acl_file(tmp_path, GOOD)]) as server:
        await server.wait_for_line(b"Access rules: 2 from ")
        intruder = await _connect(server.port, "127.0.0.1")
        worker = await _connect(server.port, "127.0.0.2")
        client = await _connect(server.port, "127.0.0.3")
        try:
            assert await intruder.request(CanDo(b"resize")) == [
                Error(b"PERMISSION_DENIED", b"not allowed to register the function resize")
            ]
            assert await worker.request(CanDo(b"resize")) == []
            assert await client.request(SubmitJob(b"resize", b"", b"x", background=True)) == [
                JobCreated(b"H:acl:1")
            ]
            assert await intruder.request(SubmitJob(b"resize", b"", b"y", background=True)) == [
                JobCreated(b"H:acl:2")
            ]
            assert await intruder.admin(b"status") == b"resize\t2\t0\t1\n"
            line = await server.wait_for_line(b"Permission denied")
        finally:
            for peer in (intruder, worker, client):
                await peer.stream.aclose()
    record = json.loads(line)
    assert record["level"] == "WARNING"
    assert record["peer"] == "127.0.0.1"
    assert record["function"] == "resize"
    assert record["message"] == (
        "Permission denied: 127.0.0.1 may not register the function 'resize': "
        "not granted by the rules that match the peer (rule 2)"
    )


@pytest.mark.gearmand
async def test_gearadmin_drop_function_from_a_refused_peer_gets_the_err_line(
    tmp_path: Path, gearadmin_cli: str
) -> None:
    async with trio_gearmand(["-L", "127.0.0.1", "-p", "0", "--acl", acl_file(tmp_path, GOOD)]) as (
        server
    ):
        with trio.fail_after(20):
            result = await anyio.run_process(
                [gearadmin_cli, "-h", "127.0.0.1", "-p", str(server.port), "--drop-function", "f"],
                check=False,
            )
            await server.wait_for_line(b"Permission denied")
        status = await anyio.run_process(
            [gearadmin_cli, "-h", "127.0.0.1", "-p", str(server.port), "--status"]
        )
    assert result.stderr.decode() == (
        "Error: PERMISSION_DENIED not+allowed+to+run+drop+function+from+this+peer\r\n"
    )
    assert status.stdout == b".\n"  # reading is open to everybody
