"""Access rules, sans-IO: matching peers, what a grant allows, and how the state refuses."""

from __future__ import annotations

from typing import Any

import pytest

from trio_gearman._proto._packets import (
    CanDo,
    CanDoTimeout,
    EchoReq,
    EchoRes,
    Error,
    GrabJob,
    JobAssign,
    JobCreated,
    NoJob,
    Priority,
    SubmitJob,
    SubmitJobEpoch,
    SubmitReduceJob,
)
from trio_gearman._proto.server.acl import (
    Acl,
    AclError,
    AclRule,
    Action,
    Denial,
    FunctionFilter,
    Grant,
    Identity,
    grant_for,
)

from .test_server_state_harness import Harness, Peer, handle

# --- identities --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "loopback"),
    [
        (Identity("127.0.0.1"), True),
        (Identity("127.0.0.2"), True),
        (Identity("::1"), True),
        (Identity("::ffff:127.0.0.1"), True),
        (Identity("memory", local=True), True),
        (Identity("memory"), False),
        (Identity("10.0.0.5"), False),
        (Identity("::ffff:10.0.0.5"), False),
        (Identity("2001:db8::1"), False),
    ],
)
def test_loopback_peers_are_loopback_addresses_and_unix_sockets(
    identity: Identity, loopback: bool
) -> None:
    assert identity.loopback is loopback


def test_an_identity_describes_itself_with_its_certificate_names() -> None:
    assert Identity("10.0.0.5").describe() == "10.0.0.5"
    described = Identity("10.0.0.5", ("a.example", "b")).describe()
    assert described == "10.0.0.5 (certificate: a.example, b)"


# --- function patterns ----------------------------------------------------------------------------


def test_a_function_filter_matches_any_of_its_glob_patterns_case_sensitively() -> None:
    check = FunctionFilter(["resize_*", "thumb?", "[ab]x", "resize_*"])
    assert check.patterns == ("resize_*", "thumb?", "[ab]x")
    assert check(b"resize_png")
    assert check(b"thumb1")
    assert check(b"ax")
    assert not check(b"Resize_png")
    assert not check(b"thumb12")
    assert not check(b"cx")
    assert not check(b"xresize_png")  # anchored at both ends
    assert not check(b"axe")
    assert repr(check) == "FunctionFilter(['resize_*', 'thumb?', '[ab]x'])"


def test_a_function_filter_without_patterns_matches_nothing() -> None:
    check = FunctionFilter([])
    assert not check(b"")
    assert not check(b"f")


def test_function_names_that_are_not_utf8_are_matched_without_error() -> None:
    assert FunctionFilter(["f\xff*"])(b"f\xffoo") is False  # the pattern is text
    assert FunctionFilter(["f*"])(b"f\xff\xfe")
    assert FunctionFilter(["caf\u00e9"])("caf\u00e9".encode())


# --- rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "a rule needs 'certificate' or 'address'"),
        ({"certificate": ""}, "'certificate' must be a non-empty string"),
        ({"address": 10}, "'address' must be a non-empty string"),
        ({"address": "10.0.0.1/8"}, "address '10.0.0.1/8' is not a network"),
        ({"address": "10.0.0.0/33"}, "address '10.0.0.0/33' is not a network"),
        ({"address": "example.com"}, "address 'example.com' is not an IP address"),
        ({"address": "*", "register": "resize_*"}, "'register' must be a list of function"),
        ({"address": "*", "submit": ["a", ""]}, "'submit' must be a list of function"),
        ({"address": "*", "submit": [1]}, "'submit' must be a list of function"),
        ({"address": "*", "submit": 5}, "'submit' must be a list of function"),
        ({"address": "*", "admin": "yes"}, "'admin' must be true or false"),
    ],
)
def test_a_malformed_rule_is_refused_with_the_reason(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(AclError, match="^" + message.replace("(", r"\(").replace("*", r"\*")):
        AclRule(**kwargs)


def test_an_acl_error_is_a_value_error() -> None:
    assert issubclass(AclError, ValueError)


@pytest.mark.parametrize(
    ("address", "peer", "matches"),
    [
        ("10.0.0.5", "10.0.0.5", True),
        ("10.0.0.5", "10.0.0.6", False),
        ("10.0.0.5", "::ffff:10.0.0.5", True),
        ("::1", "0:0::1", True),
        ("::1", "127.0.0.1", False),
        ("10.0.0.0/8", "10.200.3.4", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("10.0.0.0/8", "::ffff:10.1.1.1", True),
        ("fd00::/8", "fd12::1", True),
        ("fd00::/8", "10.0.0.1", False),
        ("10.0.0.*", "10.0.0.77", True),
        ("10.0.0.*", "10.0.1.77", False),
        ("FE80::*", "fe80::1", True),
        ("*", "memory", True),
        ("10.0.0.5", "memory", False),
        ("10.0.0.0/8", "memory", False),
    ],
)
def test_an_address_rule_matches_one_address_a_network_or_a_pattern(
    address: str, peer: str, matches: bool
) -> None:
    assert AclRule(address=address).matches(Identity(peer)) is matches


def test_a_certificate_rule_matches_any_certificate_name_ignoring_case() -> None:
    rule = AclRule(certificate="worker-*.Example.com")
    assert rule.matches(Identity("10.0.0.5", ("client", "WORKER-1.example.com")))
    assert not rule.matches(Identity("10.0.0.5", ("worker-1.example.org",)))
    assert not rule.matches(Identity("10.0.0.5"))  # plaintext: no certificate


def test_a_rule_with_certificate_and_address_needs_both() -> None:
    rule = AclRule(certificate="w1", address="10.0.0.0/8")
    assert rule.matches(Identity("10.0.0.5", ("w1",)))
    assert not rule.matches(Identity("192.168.0.5", ("w1",)))
    assert not rule.matches(Identity("10.0.0.5", ("w2",)))


def test_pattern_lists_become_tuples_and_rules_compare_by_value() -> None:
    rule = AclRule(address="10.0.0.5", register=["a", "b"])
    assert rule.register == ("a", "b")
    assert rule == AclRule(address="10.0.0.5", register=("a", "b"))


# --- an acl and its grants -------------------------------------------------------------------


def test_unnamed_rules_are_numbered_and_named_ones_keep_their_name() -> None:
    acl = Acl([AclRule(address="*"), AclRule(address="*", name="everyone"), AclRule(address="*")])
    assert [rule.name for rule in acl.rules] == ["rule 1", "everyone", "rule 3"]
    assert repr(acl).startswith("Acl([AclRule(certificate=None, address='*'")


def test_a_grant_is_the_union_of_the_matching_rules() -> None:
    acl = Acl(
        [
            AclRule(certificate="worker-*", register=["resize_*"]),
            AclRule(address="10.0.0.0/8", submit=["report"], register=["thumb"]),
            AclRule(address="192.168.0.0/16", submit=["*"], admin=True),
        ]
    )
    grant = acl.grant(Identity("10.0.0.5", ("worker-1",)))
    assert grant.rules == ("rule 1", "rule 2")
    assert grant.may_register(b"resize_png")
    assert grant.may_register(b"thumb")
    assert not grant.may_register(b"report")
    assert grant.may_submit(b"report")
    assert not grant.may_submit(b"resize_png")
    assert not grant.admin
    assert grant.why_not() == "not granted by the rules that match the peer (rule 1, rule 2)"
    everything = acl.grant(Identity("192.168.1.1"))
    assert everything.submit is None  # "*": no pattern to check
    assert everything.may_submit(b"anything")
    assert not everything.may_register(b"anything")
    assert everything.admin


def test_a_peer_no_rule_matches_may_do_nothing() -> None:
    grant = Acl([AclRule(address="10.0.0.0/8", submit=["*"], admin=True)]).grant(
        Identity("127.0.0.1")
    )
    assert not grant.may_submit(b"f")
    assert not grant.may_register(b"f")
    assert not grant.admin
    assert grant.why_not() == "no rule matches the peer"


def test_without_an_acl_anything_goes_but_admin_only_from_loopback() -> None:
    local = grant_for(None, Identity("127.0.0.1"))
    remote = grant_for(None, Identity("10.0.0.5"))
    assert local.admin
    assert not remote.admin
    assert remote.may_submit(b"f")
    assert remote.may_register(b"f")
    assert remote.register is None
    assert remote.submit is None
    assert remote.why_not() == (
        "admin commands that change the server are open to loopback peers only"
    )
    assert grant_for(None, Identity("10.0.0.5"), admin_from_anywhere=True).admin
    acl = Acl([])
    assert not grant_for(acl, Identity("127.0.0.1"), admin_from_anywhere=True).admin


# --- the file format -----------------------------------------------------------------------------


def test_an_acl_is_read_from_the_tables_of_a_toml_file() -> None:
    acl = Acl.from_dict(
        {
            "rule": [
                {"certificate": "worker-*", "register": ["resize_*"], "name": "workers"},
                {"address": "10.0.0.0/8", "submit": ["*"], "admin": True},
            ]
        }
    )
    assert acl.rules == (
        AclRule(certificate="worker-*", register=("resize_*",), name="workers"),
        AclRule(address="10.0.0.0/8", submit=("*",), admin=True, name="rule 2"),
    )
    assert Acl.from_dict({}).rules == ()


@pytest.mark.parametrize(
    ("data", "lines", "message"),
    [
        ({"rules": []}, (), "unknown key 'rules' at the top level (rules are [[rule]] tables)"),
        ({"rule": {"address": "*"}}, (), "'rule' must be an array of tables"),
        ({"rule": [{"address": "*"}, 3]}, (), "'rule' must be an array of tables"),
        (
            {"rule": [{"address": "*"}, {"adress": "*"}]},
            (3, 7),
            "rule 2 (line 7): unknown key 'adress' (a rule has name, certificate, address, "
            "register, submit, admin)",
        ),
        ({"rule": [{"address": "*", "name": 4}]}, (), "rule 1: 'name' must be a non-empty string"),
        (
            {"rule": [{"address": "10.0.0.0/33"}]},
            (1, 2),  # not one line per rule: no line numbers
            "rule 1: address '10.0.0.0/33' is not a network",
        ),
    ],
)
def test_a_malformed_acl_names_the_rule_its_line_and_the_problem(
    data: dict[str, Any], lines: tuple[int, ...], message: str
) -> None:
    with pytest.raises(AclError) as caught:
        Acl.from_dict(data, lines)
    assert str(caught.value).startswith(message)


# --- the server state: refusals -------------------------------------------------------------------


def _peer(harness: Harness, identity: Identity) -> Peer:
    return Peer(harness, harness.state.connect(identity.address.encode(), 99, identity=identity))


WORKERS = Acl(
    [
        AclRule(certificate="worker-*", register=["resize_*"], name="workers"),
        AclRule(address="10.0.0.0/8", submit=["resize_*"], name="office"),
        AclRule(address="127.0.0.1", submit=["*"], register=["*"], admin=True, name="local"),
    ]
)


def test_a_refused_can_do_gets_an_error_and_registers_nothing() -> None:
    harness = Harness(acl=WORKERS)
    worker = _peer(harness, Identity("10.0.0.9", ("worker-1",)))
    assert worker.request(CanDo(b"email"), CanDoTimeout(b"thumb", 5)) == [
        Error(b"PERMISSION_DENIED", b"not allowed to register the function email"),
        Error(b"PERMISSION_DENIED", b"not allowed to register the function thumb"),
    ]
    assert harness.state.get_function(b"email") is None
    assert harness.state.take_denials() == [
        Denial(
            Identity("10.0.0.9", ("worker-1",)),
            Action.REGISTER,
            b"email",
            "not granted by the rules that match the peer (workers, office)",
        ),
        Denial(
            Identity("10.0.0.9", ("worker-1",)),
            Action.REGISTER,
            b"thumb",
            "not granted by the rules that match the peer (workers, office)",
        ),
    ]
    assert not harness.state.take_denials()
    # The connection stays usable: what is granted works.
    assert worker.request(CanDo(b"resize_png"), EchoReq(b"ping")) == [EchoRes(b"ping")]
    assert harness.connect().admin(b"status") == b"resize_png\t0\t0\t1\n.\n"


@pytest.mark.parametrize(
    "submission",
    [
        SubmitJob(b"report", b"", b"x"),
        SubmitJob(b"report", b"", b"x", priority=Priority.HIGH),
        SubmitJob(b"report", b"", b"x", priority=Priority.LOW, background=True),
        SubmitReduceJob(b"report", b"", b"r", b"", b"x"),
        SubmitReduceJob(b"report", b"", b"r", b"", b"x", background=True),
        SubmitJobEpoch(b"report", b"", 0, b"x"),
    ],
)
def test_a_refused_submission_gets_an_error_and_queues_nothing(submission: Any) -> None:
    harness = Harness(acl=WORKERS)
    client = _peer(harness, Identity("10.0.0.9"))
    assert client.request(submission) == [
        Error(b"PERMISSION_DENIED", b"not allowed to submit jobs of report")
    ]
    assert harness.state.jobs_queued == 0
    [denial] = harness.state.take_denials()
    assert (denial.action, denial.target) == (Action.SUBMIT, b"report")
    # What is granted goes on working on the same connection.
    assert client.request(SubmitJob(b"resize_a", b"", b"x", background=True)) == [
        JobCreated(handle(1))
    ]


def test_a_refused_durable_submission_is_answered_in_order_behind_pending_ones() -> None:
    harness = Harness(acl=WORKERS, durable=True)
    client = _peer(harness, Identity("10.0.0.9"))
    client.send(
        SubmitJob(b"resize_a", b"", b"x", background=True),
        SubmitJob(b"report", b"", b"x", background=True),
    )
    assert client.received() == []  # the first waits for the store, the second behind it
    write = harness.state.take_store_write()
    assert write is not None
    harness.state.store_written(write, harness.now)
    assert client.received() == [
        JobCreated(write.jobs[0].handle),
        Error(b"PERMISSION_DENIED", b"not allowed to submit jobs of report"),
    ]


def test_a_worker_denied_one_function_still_gets_the_jobs_of_the_others() -> None:
    harness = Harness(acl=WORKERS)
    worker = _peer(harness, Identity("10.0.0.9", ("worker-1",)))
    worker.send(CanDo(b"email"), CanDo(b"resize_a"))
    worker.received()
    harness.connect().send(SubmitJob(b"email", b"", b"e", background=True))
    harness.connect().send(SubmitJob(b"resize_a", b"", b"r", background=True))
    assert worker.request(GrabJob()) == [JobAssign(handle(2), b"resize_a", b"r")]
    assert worker.request(GrabJob()) == [NoJob()]


def test_set_identity_changes_what_the_connection_may_do() -> None:
    harness = Harness(acl=WORKERS)
    peer = _peer(harness, Identity("192.168.0.1"))
    assert peer.request(CanDo(b"resize_a")) == [
        Error(b"PERMISSION_DENIED", b"not allowed to register the function resize_a")
    ]
    harness.state.set_identity(peer.conn, Identity("192.168.0.1", ("worker-7",)))
    assert peer.request(CanDo(b"resize_a")) == []
    assert peer.conn.grant.rules == ("workers",)


def test_connect_without_an_identity_takes_the_address() -> None:
    harness = Harness(acl=WORKERS)
    peer = harness.connect(b"10.1.1.1")
    assert peer.conn.grant.identity == Identity("10.1.1.1")
    assert peer.conn.grant.rules == ("office",)


def test_without_an_acl_registering_and_submitting_are_open_to_every_peer() -> None:
    harness = Harness()
    peer = _peer(harness, Identity("10.0.0.9"))
    assert peer.request(CanDo(b"f"), SubmitJob(b"f", b"", b"x", background=True)) == [
        JobCreated(handle(1))
    ]
    assert not harness.state.take_denials()


# --- the server state: admin commands -------------------------------------------------------

MUTATING = [
    (b"cancel job H:test:1", b"cancel job"),
    (b"create function f", b"create function"),
    (b"drop function f", b"drop function"),
    (b"maxqueue f 10", b"maxqueue"),
    (b"shutdown", b"shutdown"),
    (b"SHUTDOWN graceful", b"shutdown"),
]
READ_ONLY = [
    b"status",
    b"prioritystatus",
    b"workers",
    b"show jobs",
    b"show unique jobs",
    b"version",
    b"getpid",
    b"verbose",
]


def _denied(name: bytes) -> bytes:
    return (
        b"ERR PERMISSION_DENIED not+allowed+to+run+"
        + name.replace(b" ", b"+")
        + (b"+from+this+peer\r\n")
    )


@pytest.mark.parametrize(("line", "name"), MUTATING)
def test_every_mutating_admin_command_is_refused_to_a_remote_peer_by_default(
    line: bytes, name: bytes
) -> None:
    harness = Harness()
    harness.connect().send(SubmitJob(b"f", b"", b"x", background=True))
    remote = _peer(harness, Identity("10.0.0.9"))
    assert remote.admin(line) == _denied(name)
    assert remote.admin(line) == _denied(name)  # still open, still refused
    assert remote.admin(b"status") == b"f\t1\t0\t0\n.\n"  # nothing changed
    assert harness.state.get_job(handle(1)) is not None
    denials = harness.state.take_denials()
    assert [(d.action, d.target) for d in denials] == [(Action.ADMIN, line)] * 2
    assert denials[0].reason == (
        "admin commands that change the server are open to loopback peers only"
    )


@pytest.mark.parametrize("line", READ_ONLY)
def test_read_only_admin_commands_are_open_to_everybody(line: bytes) -> None:
    harness = Harness(acl=Acl([]))
    remote = _peer(harness, Identity("10.0.0.9"))
    assert not remote.admin(line).startswith(b"ERR")
    assert not harness.state.take_denials()


def test_mutating_admin_commands_run_for_loopback_peers_and_with_admin_from_anywhere() -> None:
    harness = Harness()
    local = _peer(harness, Identity("::1"))
    assert local.admin(b"create function f") == b"OK\r\n"
    assert local.admin(b"shutdown") == b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"
    unix = _peer(harness, Identity("memory", local=True))
    assert unix.admin(b"drop function f") == b"OK\r\n"
    anywhere = Harness(admin_from_anywhere=True)
    remote = _peer(anywhere, Identity("10.0.0.9"))
    assert remote.admin(b"create function g") == b"OK\r\n"
    assert not harness.state.take_denials()
    assert not anywhere.state.take_denials()


def test_with_an_acl_admin_comes_from_the_rules_only() -> None:
    harness = Harness(acl=WORKERS)
    assert _peer(harness, Identity("127.0.0.1")).admin(b"create function f") == b"OK\r\n"
    loopback_without_rule = _peer(harness, Identity("127.0.0.2"))
    assert loopback_without_rule.admin(b"create function g") == _denied(b"create function")
    [denial] = harness.state.take_denials()
    assert denial.reason == "no rule matches the peer"
    assert denial.identity == Identity("127.0.0.2")


def test_a_long_refused_admin_line_is_recorded_shortened() -> None:
    harness = Harness()
    remote = _peer(harness, Identity("10.0.0.9"))
    line = b"create function " + b"f" * 1000
    assert remote.admin(line) == _denied(b"create function")
    [denial] = harness.state.take_denials()
    assert denial.target == line[:256]


def test_a_default_grant_allows_everything() -> None:
    grant = Grant(Identity("10.0.0.9"))
    assert grant.admin
    assert grant.may_register(b"f")
    assert grant.may_submit(b"f")
