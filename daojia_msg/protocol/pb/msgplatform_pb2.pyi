from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    C2C: _ClassVar[Kind]
    S2C: _ClassVar[Kind]
    C2S: _ClassVar[Kind]
KIND_UNSPECIFIED: Kind
C2C: Kind
S2C: Kind
C2S: Kind

class LoginRequest(_message.Message):
    __slots__ = ("token", "device_id", "client_version")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    token: str
    device_id: str
    client_version: str
    def __init__(self, token: _Optional[str] = ..., device_id: _Optional[str] = ..., client_version: _Optional[str] = ...) -> None: ...

class LoginResponse(_message.Message):
    __slots__ = ("code", "reason", "session_id", "heartbeat_s", "server_time_ms", "offline_count")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_S_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_COUNT_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    session_id: str
    heartbeat_s: int
    server_time_ms: int
    offline_count: int
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ..., session_id: _Optional[str] = ..., heartbeat_s: _Optional[int] = ..., server_time_ms: _Optional[int] = ..., offline_count: _Optional[int] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("code", "reason", "msgid", "logid", "server_time_ms")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MSGID_FIELD_NUMBER: _ClassVar[int]
    LOGID_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    msgid: int
    logid: str
    server_time_ms: int
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ..., msgid: _Optional[int] = ..., logid: _Optional[str] = ..., server_time_ms: _Optional[int] = ...) -> None: ...

class C2SRequest(_message.Message):
    __slots__ = ("content", "logid")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    LOGID_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    logid: str
    def __init__(self, content: _Optional[bytes] = ..., logid: _Optional[str] = ...) -> None: ...

class C2CRequest(_message.Message):
    __slots__ = ("to_uid", "to_appcode", "content", "client_msg_id", "logid")
    TO_UID_FIELD_NUMBER: _ClassVar[int]
    TO_APPCODE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MSG_ID_FIELD_NUMBER: _ClassVar[int]
    LOGID_FIELD_NUMBER: _ClassVar[int]
    to_uid: int
    to_appcode: int
    content: bytes
    client_msg_id: str
    logid: str
    def __init__(self, to_uid: _Optional[int] = ..., to_appcode: _Optional[int] = ..., content: _Optional[bytes] = ..., client_msg_id: _Optional[str] = ..., logid: _Optional[str] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("msgid", "from_uid", "from_appcode", "to_uid", "to_appcode", "msgtype", "content", "send_time_ms", "logid", "kind")
    MSGID_FIELD_NUMBER: _ClassVar[int]
    FROM_UID_FIELD_NUMBER: _ClassVar[int]
    FROM_APPCODE_FIELD_NUMBER: _ClassVar[int]
    TO_UID_FIELD_NUMBER: _ClassVar[int]
    TO_APPCODE_FIELD_NUMBER: _ClassVar[int]
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SEND_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    LOGID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    msgid: int
    from_uid: int
    from_appcode: int
    to_uid: int
    to_appcode: int
    msgtype: int
    content: bytes
    send_time_ms: int
    logid: str
    kind: Kind
    def __init__(self, msgid: _Optional[int] = ..., from_uid: _Optional[int] = ..., from_appcode: _Optional[int] = ..., to_uid: _Optional[int] = ..., to_appcode: _Optional[int] = ..., msgtype: _Optional[int] = ..., content: _Optional[bytes] = ..., send_time_ms: _Optional[int] = ..., logid: _Optional[str] = ..., kind: _Optional[_Union[Kind, str]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("msgids",)
    MSGIDS_FIELD_NUMBER: _ClassVar[int]
    msgids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, msgids: _Optional[_Iterable[int]] = ...) -> None: ...

class Kickout(_message.Message):
    __slots__ = ("reason_code", "reason")
    REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason_code: int
    reason: str
    def __init__(self, reason_code: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("after_msgid", "limit")
    AFTER_MSGID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after_msgid: int
    limit: int
    def __init__(self, after_msgid: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class PullResponse(_message.Message):
    __slots__ = ("code", "reason", "messages", "has_more")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    has_more: bool
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("peer_uid", "before_msgid", "limit")
    PEER_UID_FIELD_NUMBER: _ClassVar[int]
    BEFORE_MSGID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    peer_uid: int
    before_msgid: int
    limit: int
    def __init__(self, peer_uid: _Optional[int] = ..., before_msgid: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("code", "reason", "messages", "has_more")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    has_more: bool
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...
