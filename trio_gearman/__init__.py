"""Gearman for Python on structured concurrency: job server, client, worker, admin client.

Everything public is re-exported here; the modules with a leading underscore are
private.
"""

from ._client.admin import AdminClient as AdminClient
from ._client.client import Client as Client
from ._client.job import (
    ForegroundJob as ForegroundJob,
    JobHandle as JobHandle,
    JobStatus as JobStatus,
)
from ._exceptions import (
    AdminError as AdminError,
    AdminLineTooLong as AdminLineTooLong,
    BadAdminReply as BadAdminReply,
    BadArgumentCount as BadArgumentCount,
    BadMagic as BadMagic,
    ConnectFailed as ConnectFailed,
    ConnectionLost as ConnectionLost,
    GearmanError as GearmanError,
    InvalidArgument as InvalidArgument,
    JobError as JobError,
    JobException as JobException,
    JobFailed as JobFailed,
    NoServersAvailable as NoServersAvailable,
    PacketTooLarge as PacketTooLarge,
    ProtocolError as ProtocolError,
    ServerConnectionError as ServerConnectionError,
    ServerLost as ServerLost,
    TooManyAdminArguments as TooManyAdminArguments,
    UniqueTooLong as UniqueTooLong,
    UnknownPacketType as UnknownPacketType,
)
from ._failover import (
    Backoff as Backoff,
    LinkState as LinkState,
    ServerHealth as ServerHealth,
)
from ._payload import Codec as Codec, JsonCodec as JsonCodec
from ._proto._admin import (
    FunctionPriorityStatus as FunctionPriorityStatus,
    FunctionStatus as FunctionStatus,
    JobInfo as JobInfo,
    WorkerInfo as WorkerInfo,
)
from ._proto._packets import (
    Priority as Priority,
    WorkData as WorkData,
    WorkStatus as WorkStatus,
    WorkWarning as WorkWarning,
)
from ._proto.server.acl import (
    Acl as Acl,
    AclError as AclError,
    AclRule as AclRule,
    Identity as Identity,
)
from ._proto.server.state import ServerConfig as ServerConfig
from ._server.server import (
    GearmanServer as GearmanServer,
    ServerStatistics as ServerStatistics,
    serve as serve,
)
from ._server.sockets import KeepAlive as KeepAlive
from ._version import __version__ as __version__
from ._worker.job import Job as Job
from ._worker.worker import Worker as Worker

__all__ = [
    "Acl",
    "AclError",
    "AclRule",
    "AdminClient",
    "AdminError",
    "AdminLineTooLong",
    "Backoff",
    "BadAdminReply",
    "BadArgumentCount",
    "BadMagic",
    "Client",
    "Codec",
    "ConnectFailed",
    "ConnectionLost",
    "ForegroundJob",
    "FunctionPriorityStatus",
    "FunctionStatus",
    "GearmanError",
    "GearmanServer",
    "Identity",
    "InvalidArgument",
    "Job",
    "JobError",
    "JobException",
    "JobFailed",
    "JobHandle",
    "JobInfo",
    "JobStatus",
    "JsonCodec",
    "KeepAlive",
    "LinkState",
    "NoServersAvailable",
    "PacketTooLarge",
    "Priority",
    "ProtocolError",
    "ServerConfig",
    "ServerConnectionError",
    "ServerHealth",
    "ServerLost",
    "ServerStatistics",
    "TooManyAdminArguments",
    "UniqueTooLong",
    "UnknownPacketType",
    "WorkData",
    "WorkStatus",
    "WorkWarning",
    "Worker",
    "WorkerInfo",
    "__version__",
    "serve",
]
