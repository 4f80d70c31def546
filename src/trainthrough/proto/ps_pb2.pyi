from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data", "shared")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    shared: SharedRegion
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., shared: _Optional[_Union[SharedRegion, _Mapping]] = ...) -> None: ...

class SharedRegion(_message.Message):
    __slots__ = ("segment", "offset", "length")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    segment: str
    offset: int
    length: int
    def __init__(self, segment: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class SharedMemoryOffer(_message.Message):
    __slots__ = ("probe_segment", "nonce")
    PROBE_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    probe_segment: str
    nonce: bytes
    def __init__(self, probe_segment: _Optional[str] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class DataChannelOffer(_message.Message):
    __slots__ = ("port",)
    PORT_FIELD_NUMBER: _ClassVar[int]
    port: int
    def __init__(self, port: _Optional[int] = ...) -> None: ...

class DataHello(_message.Message):
    __slots__ = ("worker", "token")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    worker: str
    token: str
    def __init__(self, worker: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("worker", "have_version", "dtype", "into")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    INTO_FIELD_NUMBER: _ClassVar[int]
    worker: str
    have_version: int
    dtype: str
    into: SharedRegion
    def __init__(self, worker: _Optional[str] = ..., have_version: _Optional[int] = ..., dtype: _Optional[str] = ..., into: _Optional[_Union[SharedRegion, _Mapping]] = ...) -> None: ...

class PullReply(_message.Message):
    __slots__ = ("version", "params", "incarnation", "applied_pushes", "started_push_id", "chain")
    class AppliedPushesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_PUSHES_FIELD_NUMBER: _ClassVar[int]
    STARTED_PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    version: int
    params: Tensor
    incarnation: str
    applied_pushes: _containers.ScalarMap[str, int]
    started_push_id: int
    chain: ChainConfig
    def __init__(self, version: _Optional[int] = ..., params: _Optional[_Union[Tensor, _Mapping]] = ..., incarnation: _Optional[str] = ..., applied_pushes: _Optional[_Mapping[str, int]] = ..., started_push_id: _Optional[int] = ..., chain: _Optional[_Union[ChainConfig, _Mapping]] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("worker", "push_id", "base_version", "gradient", "samples", "pull_dtype", "pull_into")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PULL_DTYPE_FIELD_NUMBER: _ClassVar[int]
    PULL_INTO_FIELD_NUMBER: _ClassVar[int]
    worker: str
    push_id: int
    base_version: int
    gradient: Tensor
    samples: int
    pull_dtype: str
    pull_into: SharedRegion
    def __init__(self, worker: _Optional[str] = ..., push_id: _Optional[int] = ..., base_version: _Optional[int] = ..., gradient: _Optional[_Union[Tensor, _Mapping]] = ..., samples: _Optional[int] = ..., pull_dtype: _Optional[str] = ..., pull_into: _Optional[_Union[SharedRegion, _Mapping]] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("version", "duplicate", "incarnation", "params", "params_version", "applied_pushes", "started_push_id", "chain")
    class AppliedPushesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_PUSHES_FIELD_NUMBER: _ClassVar[int]
    STARTED_PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    version: int
    duplicate: bool
    incarnation: str
    params: Tensor
    params_version: int
    applied_pushes: _containers.ScalarMap[str, int]
    started_push_id: int
    chain: ChainConfig
    def __init__(self, version: _Optional[int] = ..., duplicate: _Optional[bool] = ..., incarnation: _Optional[str] = ..., params: _Optional[_Union[Tensor, _Mapping]] = ..., params_version: _Optional[int] = ..., applied_pushes: _Optional[_Mapping[str, int]] = ..., started_push_id: _Optional[int] = ..., chain: _Optional[_Union[ChainConfig, _Mapping]] = ...) -> None: ...

class PushChunk(_message.Message):
    __slots__ = ("request", "data")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    request: PushRequest
    data: bytes
    def __init__(self, request: _Optional[_Union[PushRequest, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PullChunk(_message.Message):
    __slots__ = ("reply", "data")
    REPLY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    reply: PullReply
    data: bytes
    def __init__(self, reply: _Optional[_Union[PullReply, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RejoinChunk(_message.Message):
    __slots__ = ("request", "data")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    request: RejoinRequest
    data: bytes
    def __init__(self, request: _Optional[_Union[RejoinRequest, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChainMember(_message.Message):
    __slots__ = ("name", "address")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class ChainConfig(_message.Message):
    __slots__ = ("epoch", "members")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    members: _containers.RepeatedCompositeFieldContainer[ChainMember]
    def __init__(self, epoch: _Optional[int] = ..., members: _Optional[_Iterable[_Union[ChainMember, _Mapping]]] = ...) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("name", "mode", "state", "version", "updates_since_start", "started_version", "restored_from", "chain", "applied_seq", "accuracy", "worker_steps", "incarnation", "ready_at", "first_update_at", "lost_updates", "workers", "shared_memory", "data_channel")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATES_SINCE_START_FIELD_NUMBER: _ClassVar[int]
    STARTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESTORED_FROM_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    WORKER_STEPS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    READY_AT_FIELD_NUMBER: _ClassVar[int]
    FIRST_UPDATE_AT_FIELD_NUMBER: _ClassVar[int]
    LOST_UPDATES_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    DATA_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    mode: str
    state: str
    version: int
    updates_since_start: int
    started_version: int
    restored_from: str
    chain: ChainConfig
    applied_seq: int
    accuracy: float
    worker_steps: int
    incarnation: str
    ready_at: float
    first_update_at: float
    lost_updates: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerProgress]
    shared_memory: SharedMemoryOffer
    data_channel: DataChannelOffer
    def __init__(self, name: _Optional[str] = ..., mode: _Optional[str] = ..., state: _Optional[str] = ..., version: _Optional[int] = ..., updates_since_start: _Optional[int] = ..., started_version: _Optional[int] = ..., restored_from: _Optional[str] = ..., chain: _Optional[_Union[ChainConfig, _Mapping]] = ..., applied_seq: _Optional[int] = ..., accuracy: _Optional[float] = ..., worker_steps: _Optional[int] = ..., incarnation: _Optional[str] = ..., ready_at: _Optional[float] = ..., first_update_at: _Optional[float] = ..., lost_updates: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerProgress, _Mapping]]] = ..., shared_memory: _Optional[_Union[SharedMemoryOffer, _Mapping]] = ..., data_channel: _Optional[_Union[DataChannelOffer, _Mapping]] = ...) -> None: ...

class WorkerProgress(_message.Message):
    __slots__ = ("worker", "steps", "accuracy", "lost_updates", "evaluation", "idle_seconds")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOST_UPDATES_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    worker: str
    steps: int
    accuracy: float
    lost_updates: int
    evaluation: int
    idle_seconds: float
    def __init__(self, worker: _Optional[str] = ..., steps: _Optional[int] = ..., accuracy: _Optional[float] = ..., lost_updates: _Optional[int] = ..., evaluation: _Optional[int] = ..., idle_seconds: _Optional[float] = ...) -> None: ...

class UpdateRecord(_message.Message):
    __slots__ = ("seq", "gradient", "workers", "push_ids")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    PUSH_IDS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    gradient: Tensor
    workers: _containers.RepeatedScalarFieldContainer[str]
    push_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seq: _Optional[int] = ..., gradient: _Optional[_Union[Tensor, _Mapping]] = ..., workers: _Optional[_Iterable[str]] = ..., push_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ReplicateRequest(_message.Message):
    __slots__ = ("epoch", "records", "sender")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    records: _containers.RepeatedCompositeFieldContainer[UpdateRecord]
    sender: str
    def __init__(self, epoch: _Optional[int] = ..., records: _Optional[_Iterable[_Union[UpdateRecord, _Mapping]]] = ..., sender: _Optional[str] = ...) -> None: ...

class ReplicateChunk(_message.Message):
    __slots__ = ("request", "data")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    request: ReplicateRequest
    data: bytes
    def __init__(self, request: _Optional[_Union[ReplicateRequest, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ReplicateReply(_message.Message):
    __slots__ = ("applied_seq",)
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    applied_seq: int
    def __init__(self, applied_seq: _Optional[int] = ...) -> None: ...

class ReconfigureReply(_message.Message):
    __slots__ = ("applied_seq",)
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    applied_seq: int
    def __init__(self, applied_seq: _Optional[int] = ...) -> None: ...

class StateHeader(_message.Message):
    __slots__ = ("seq", "total_bytes", "epoch", "sender")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    seq: int
    total_bytes: int
    epoch: int
    sender: str
    def __init__(self, seq: _Optional[int] = ..., total_bytes: _Optional[int] = ..., epoch: _Optional[int] = ..., sender: _Optional[str] = ...) -> None: ...

class StateChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: StateHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[StateHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class InstallReply(_message.Message):
    __slots__ = ("applied_seq",)
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    applied_seq: int
    def __init__(self, applied_seq: _Optional[int] = ...) -> None: ...

class BufferedGradient(_message.Message):
    __slots__ = ("base_version", "count", "gradient", "seq", "push_id", "progress", "samples")
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    base_version: int
    count: int
    gradient: Tensor
    seq: int
    push_id: int
    progress: bool
    samples: int
    def __init__(self, base_version: _Optional[int] = ..., count: _Optional[int] = ..., gradient: _Optional[_Union[Tensor, _Mapping]] = ..., seq: _Optional[int] = ..., push_id: _Optional[int] = ..., progress: _Optional[bool] = ..., samples: _Optional[int] = ...) -> None: ...

class RejoinRequest(_message.Message):
    __slots__ = ("worker", "base_version", "base_params", "buffered", "push_id", "announce", "base_applied_pushes")
    class BaseAppliedPushesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    WORKER_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_PARAMS_FIELD_NUMBER: _ClassVar[int]
    BUFFERED_FIELD_NUMBER: _ClassVar[int]
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    ANNOUNCE_FIELD_NUMBER: _ClassVar[int]
    BASE_APPLIED_PUSHES_FIELD_NUMBER: _ClassVar[int]
    worker: str
    base_version: int
    base_params: Tensor
    buffered: _containers.RepeatedCompositeFieldContainer[BufferedGradient]
    push_id: int
    announce: bool
    base_applied_pushes: _containers.ScalarMap[str, int]
    def __init__(self, worker: _Optional[str] = ..., base_version: _Optional[int] = ..., base_params: _Optional[_Union[Tensor, _Mapping]] = ..., buffered: _Optional[_Iterable[_Union[BufferedGradient, _Mapping]]] = ..., push_id: _Optional[int] = ..., announce: _Optional[bool] = ..., base_applied_pushes: _Optional[_Mapping[str, int]] = ...) -> None: ...

class RejoinReply(_message.Message):
    __slots__ = ("version", "replayed", "seeded_from", "replayed_seq")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    SEEDED_FROM_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_SEQ_FIELD_NUMBER: _ClassVar[int]
    version: int
    replayed: int
    seeded_from: str
    replayed_seq: int
    def __init__(self, version: _Optional[int] = ..., replayed: _Optional[int] = ..., seeded_from: _Optional[str] = ..., replayed_seq: _Optional[int] = ...) -> None: ...

class ProgressReport(_message.Message):
    __slots__ = ("worker", "steps", "accuracy", "loss", "lost_updates", "idle_seconds")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LOST_UPDATES_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    worker: str
    steps: int
    accuracy: float
    loss: float
    lost_updates: int
    idle_seconds: float
    def __init__(self, worker: _Optional[str] = ..., steps: _Optional[int] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., lost_updates: _Optional[int] = ..., idle_seconds: _Optional[float] = ...) -> None: ...

class ProgressReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
