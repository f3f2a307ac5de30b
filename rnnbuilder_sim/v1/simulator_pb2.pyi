import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_FLOAT64: _ClassVar[DataType]
    DATA_TYPE_FLOAT16: _ClassVar[DataType]
    DATA_TYPE_BFLOAT16: _ClassVar[DataType]
    DATA_TYPE_INT64: _ClassVar[DataType]
    DATA_TYPE_INT32: _ClassVar[DataType]
    DATA_TYPE_INT16: _ClassVar[DataType]
    DATA_TYPE_INT8: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]
    DATA_TYPE_BOOL: _ClassVar[DataType]

class TensorEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENSOR_ENCODING_UNSPECIFIED: _ClassVar[TensorEncoding]
    TENSOR_ENCODING_RAW: _ClassVar[TensorEncoding]
    TENSOR_ENCODING_BITPACKED: _ClassVar[TensorEncoding]

class ArgumentType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARGUMENT_TYPE_UNSPECIFIED: _ClassVar[ArgumentType]
    ARGUMENT_TYPE_INTEGER: _ClassVar[ArgumentType]
    ARGUMENT_TYPE_REAL: _ClassVar[ArgumentType]
    ARGUMENT_TYPE_BOOLEAN: _ClassVar[ArgumentType]
    ARGUMENT_TYPE_STRING: _ClassVar[ArgumentType]
    ARGUMENT_TYPE_FACTORY: _ClassVar[ArgumentType]
    ARGUMENT_TYPE_TENSOR: _ClassVar[ArgumentType]
    ARGUMENT_TYPE_LIST: _ClassVar[ArgumentType]
    ARGUMENT_TYPE_NULL: _ClassVar[ArgumentType]

class StateCarry(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATE_CARRY_UNSPECIFIED: _ClassVar[StateCarry]
    STATE_CARRY_NONE: _ClassVar[StateCarry]
    STATE_CARRY_START: _ClassVar[StateCarry]
    STATE_CARRY_CONTINUE: _ClassVar[StateCarry]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_FLOAT64: DataType
DATA_TYPE_FLOAT16: DataType
DATA_TYPE_BFLOAT16: DataType
DATA_TYPE_INT64: DataType
DATA_TYPE_INT32: DataType
DATA_TYPE_INT16: DataType
DATA_TYPE_INT8: DataType
DATA_TYPE_UINT8: DataType
DATA_TYPE_BOOL: DataType
TENSOR_ENCODING_UNSPECIFIED: TensorEncoding
TENSOR_ENCODING_RAW: TensorEncoding
TENSOR_ENCODING_BITPACKED: TensorEncoding
ARGUMENT_TYPE_UNSPECIFIED: ArgumentType
ARGUMENT_TYPE_INTEGER: ArgumentType
ARGUMENT_TYPE_REAL: ArgumentType
ARGUMENT_TYPE_BOOLEAN: ArgumentType
ARGUMENT_TYPE_STRING: ArgumentType
ARGUMENT_TYPE_FACTORY: ArgumentType
ARGUMENT_TYPE_TENSOR: ArgumentType
ARGUMENT_TYPE_LIST: ArgumentType
ARGUMENT_TYPE_NULL: ArgumentType
STATE_CARRY_UNSPECIFIED: StateCarry
STATE_CARRY_NONE: StateCarry
STATE_CARRY_START: StateCarry
STATE_CARRY_CONTINUE: StateCarry

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data", "encoding")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    encoding: TensorEncoding
    def __init__(self, dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., encoding: _Optional[_Union[TensorEncoding, str]] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: Tensor
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class NetworkSpec(_message.Message):
    __slots__ = ("root",)
    ROOT_FIELD_NUMBER: _ClassVar[int]
    root: Factory
    def __init__(self, root: _Optional[_Union[Factory, _Mapping]] = ...) -> None: ...

class Factory(_message.Message):
    __slots__ = ("type", "args", "factories", "layers", "names")
    class ArgsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    FACTORIES_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    type: str
    args: _containers.MessageMap[str, Value]
    factories: _containers.RepeatedCompositeFieldContainer[Factory]
    layers: _containers.RepeatedCompositeFieldContainer[Node]
    names: _containers.RepeatedCompositeFieldContainer[LayerName]
    def __init__(self, type: _Optional[str] = ..., args: _Optional[_Mapping[str, Value]] = ..., factories: _Optional[_Iterable[_Union[Factory, _Mapping]]] = ..., layers: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., names: _Optional[_Iterable[_Union[LayerName, _Mapping]]] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("bool_value", "int_value", "number_value", "string_value", "list_value", "factory_value", "null_value", "tensor_value")
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    LIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    FACTORY_VALUE_FIELD_NUMBER: _ClassVar[int]
    NULL_VALUE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_VALUE_FIELD_NUMBER: _ClassVar[int]
    bool_value: bool
    int_value: int
    number_value: float
    string_value: str
    list_value: ValueList
    factory_value: Factory
    null_value: bool
    tensor_value: Tensor
    def __init__(self, bool_value: _Optional[bool] = ..., int_value: _Optional[int] = ..., number_value: _Optional[float] = ..., string_value: _Optional[str] = ..., list_value: _Optional[_Union[ValueList, _Mapping]] = ..., factory_value: _Optional[_Union[Factory, _Mapping]] = ..., null_value: _Optional[bool] = ..., tensor_value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ValueList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class LayerName(_message.Message):
    __slots__ = ("name", "node_index")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_INDEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    node_index: int
    def __init__(self, name: _Optional[str] = ..., node_index: _Optional[int] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("input", "layer", "stack", "sum", "list", "placeholder")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    STACK_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    PLACEHOLDER_FIELD_NUMBER: _ClassVar[int]
    input: InputNode
    layer: LayerNode
    stack: CombineNode
    sum: CombineNode
    list: CombineNode
    placeholder: PlaceholderNode
    def __init__(self, input: _Optional[_Union[InputNode, _Mapping]] = ..., layer: _Optional[_Union[LayerNode, _Mapping]] = ..., stack: _Optional[_Union[CombineNode, _Mapping]] = ..., sum: _Optional[_Union[CombineNode, _Mapping]] = ..., list: _Optional[_Union[CombineNode, _Mapping]] = ..., placeholder: _Optional[_Union[PlaceholderNode, _Mapping]] = ...) -> None: ...

class InputNode(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LayerNode(_message.Message):
    __slots__ = ("input_index", "factories")
    INPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    FACTORIES_FIELD_NUMBER: _ClassVar[int]
    input_index: int
    factories: _containers.RepeatedCompositeFieldContainer[Factory]
    def __init__(self, input_index: _Optional[int] = ..., factories: _Optional[_Iterable[_Union[Factory, _Mapping]]] = ...) -> None: ...

class CombineNode(_message.Message):
    __slots__ = ("input_indices",)
    INPUT_INDICES_FIELD_NUMBER: _ClassVar[int]
    input_indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, input_indices: _Optional[_Iterable[int]] = ...) -> None: ...

class PlaceholderNode(_message.Message):
    __slots__ = ("layer_index", "hint", "initial_value")
    LAYER_INDEX_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    INITIAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    layer_index: int
    hint: str
    initial_value: InitialValue
    def __init__(self, layer_index: _Optional[int] = ..., hint: _Optional[str] = ..., initial_value: _Optional[_Union[InitialValue, _Mapping]] = ...) -> None: ...

class InitialValue(_message.Message):
    __slots__ = ("zeros", "ones", "constant")
    ZEROS_FIELD_NUMBER: _ClassVar[int]
    ONES_FIELD_NUMBER: _ClassVar[int]
    CONSTANT_FIELD_NUMBER: _ClassVar[int]
    zeros: bool
    ones: bool
    constant: float
    def __init__(self, zeros: _Optional[bool] = ..., ones: _Optional[bool] = ..., constant: _Optional[float] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("name", "network", "input_shape", "batch_size", "seed", "output_shape", "parameter_count", "timesteps_simulated", "device", "recordable_layers", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    TIMESTEPS_SIMULATED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    RECORDABLE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    network: NetworkSpec
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    batch_size: int
    seed: int
    output_shape: _containers.RepeatedScalarFieldContainer[int]
    parameter_count: int
    timesteps_simulated: int
    device: str
    recordable_layers: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., network: _Optional[_Union[NetworkSpec, _Mapping]] = ..., input_shape: _Optional[_Iterable[int]] = ..., batch_size: _Optional[int] = ..., seed: _Optional[int] = ..., output_shape: _Optional[_Iterable[int]] = ..., parameter_count: _Optional[int] = ..., timesteps_simulated: _Optional[int] = ..., device: _Optional[str] = ..., recordable_layers: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("version", "device", "factory_types", "surrogate_types", "limits", "losses", "optimizers", "server_id", "batching", "factories", "surrogates", "encoders")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FACTORY_TYPES_FIELD_NUMBER: _ClassVar[int]
    SURROGATE_TYPES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZERS_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    FACTORIES_FIELD_NUMBER: _ClassVar[int]
    SURROGATES_FIELD_NUMBER: _ClassVar[int]
    ENCODERS_FIELD_NUMBER: _ClassVar[int]
    version: str
    device: str
    factory_types: _containers.RepeatedScalarFieldContainer[str]
    surrogate_types: _containers.RepeatedScalarFieldContainer[str]
    limits: Limits
    losses: _containers.RepeatedScalarFieldContainer[str]
    optimizers: _containers.RepeatedScalarFieldContainer[str]
    server_id: str
    batching: bool
    factories: _containers.RepeatedCompositeFieldContainer[FactoryDescription]
    surrogates: _containers.RepeatedCompositeFieldContainer[FactoryDescription]
    encoders: _containers.RepeatedCompositeFieldContainer[FactoryDescription]
    def __init__(self, version: _Optional[str] = ..., device: _Optional[str] = ..., factory_types: _Optional[_Iterable[str]] = ..., surrogate_types: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., losses: _Optional[_Iterable[str]] = ..., optimizers: _Optional[_Iterable[str]] = ..., server_id: _Optional[str] = ..., batching: _Optional[bool] = ..., factories: _Optional[_Iterable[_Union[FactoryDescription, _Mapping]]] = ..., surrogates: _Optional[_Iterable[_Union[FactoryDescription, _Mapping]]] = ..., encoders: _Optional[_Iterable[_Union[FactoryDescription, _Mapping]]] = ...) -> None: ...

class FactoryDescription(_message.Message):
    __slots__ = ("type", "description", "arguments")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    type: str
    description: str
    arguments: _containers.RepeatedCompositeFieldContainer[ArgumentDescription]
    def __init__(self, type: _Optional[str] = ..., description: _Optional[str] = ..., arguments: _Optional[_Iterable[_Union[ArgumentDescription, _Mapping]]] = ...) -> None: ...

class ArgumentDescription(_message.Message):
    __slots__ = ("name", "types", "item_types", "required", "default_value", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    ITEM_TYPES_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    types: _containers.RepeatedScalarFieldContainer[ArgumentType]
    item_types: _containers.RepeatedScalarFieldContainer[ArgumentType]
    required: bool
    default_value: Value
    description: str
    def __init__(self, name: _Optional[str] = ..., types: _Optional[_Iterable[_Union[ArgumentType, str]]] = ..., item_types: _Optional[_Iterable[_Union[ArgumentType, str]]] = ..., required: _Optional[bool] = ..., default_value: _Optional[_Union[Value, _Mapping]] = ..., description: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_sessions", "max_parameters_per_session", "max_timesteps_times_batch", "max_batch_size", "max_message_bytes", "max_state_elements_per_session", "max_memory_mb", "max_network_nodes")
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_PARAMETERS_PER_SESSION_FIELD_NUMBER: _ClassVar[int]
    MAX_TIMESTEPS_TIMES_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_STATE_ELEMENTS_PER_SESSION_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    MAX_NETWORK_NODES_FIELD_NUMBER: _ClassVar[int]
    max_sessions: int
    max_parameters_per_session: int
    max_timesteps_times_batch: int
    max_batch_size: int
    max_message_bytes: int
    max_state_elements_per_session: int
    max_memory_mb: int
    max_network_nodes: int
    def __init__(self, max_sessions: _Optional[int] = ..., max_parameters_per_session: _Optional[int] = ..., max_timesteps_times_batch: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_state_elements_per_session: _Optional[int] = ..., max_memory_mb: _Optional[int] = ..., max_network_nodes: _Optional[int] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("session", "session_id")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session: Session
    session_id: str
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., session_id: _Optional[str] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions", "next_page_token")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    next_page_token: str
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteSessionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResetStateRequest(_message.Message):
    __slots__ = ("name", "batch_indices")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BATCH_INDICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    batch_indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., batch_indices: _Optional[_Iterable[int]] = ...) -> None: ...

class ResetStateResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStateRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetStateResponse(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, tensors: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class SetStateRequest(_message.Message):
    __slots__ = ("name", "tensors")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, name: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class SetStateResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetParametersRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetParametersResponse(_message.Message):
    __slots__ = ("parameters",)
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    parameters: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, parameters: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class SetParametersRequest(_message.Message):
    __slots__ = ("name", "parameters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    parameters: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, name: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class SetParametersResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("name", "input", "record_layers", "output_encoding", "exact", "encoder")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    RECORD_LAYERS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    name: str
    input: Tensor
    record_layers: _containers.RepeatedScalarFieldContainer[str]
    output_encoding: TensorEncoding
    exact: bool
    encoder: Factory
    def __init__(self, name: _Optional[str] = ..., input: _Optional[_Union[Tensor, _Mapping]] = ..., record_layers: _Optional[_Iterable[str]] = ..., output_encoding: _Optional[_Union[TensorEncoding, str]] = ..., exact: _Optional[bool] = ..., encoder: _Optional[_Union[Factory, _Mapping]] = ...) -> None: ...

class RunResponse(_message.Message):
    __slots__ = ("output", "recordings")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RECORDINGS_FIELD_NUMBER: _ClassVar[int]
    output: Tensor
    recordings: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, output: _Optional[_Union[Tensor, _Mapping]] = ..., recordings: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class SimulateRequest(_message.Message):
    __slots__ = ("name", "input", "record_layers", "output_encoding", "exact")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    RECORD_LAYERS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    name: str
    input: Tensor
    record_layers: _containers.RepeatedScalarFieldContainer[str]
    output_encoding: TensorEncoding
    exact: bool
    def __init__(self, name: _Optional[str] = ..., input: _Optional[_Union[Tensor, _Mapping]] = ..., record_layers: _Optional[_Iterable[str]] = ..., output_encoding: _Optional[_Union[TensorEncoding, str]] = ..., exact: _Optional[bool] = ...) -> None: ...

class SimulateResponse(_message.Message):
    __slots__ = ("output", "recordings", "first_timestep")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RECORDINGS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TIMESTEP_FIELD_NUMBER: _ClassVar[int]
    output: Tensor
    recordings: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    first_timestep: int
    def __init__(self, output: _Optional[_Union[Tensor, _Mapping]] = ..., recordings: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., first_timestep: _Optional[int] = ...) -> None: ...

class OptimizerConfig(_message.Message):
    __slots__ = ("name", "learning_rate", "weight_decay", "momentum")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    name: str
    learning_rate: float
    weight_decay: float
    momentum: float
    def __init__(self, name: _Optional[str] = ..., learning_rate: _Optional[float] = ..., weight_decay: _Optional[float] = ..., momentum: _Optional[float] = ...) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("loss", "optimizer", "grad_clip_norm")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    GRAD_CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    loss: str
    optimizer: OptimizerConfig
    grad_clip_norm: float
    def __init__(self, loss: _Optional[str] = ..., optimizer: _Optional[_Union[OptimizerConfig, _Mapping]] = ..., grad_clip_norm: _Optional[float] = ...) -> None: ...

class TrainStepRequest(_message.Message):
    __slots__ = ("name", "input", "targets", "config", "carry")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CARRY_FIELD_NUMBER: _ClassVar[int]
    name: str
    input: Tensor
    targets: Tensor
    config: TrainingConfig
    carry: StateCarry
    def __init__(self, name: _Optional[str] = ..., input: _Optional[_Union[Tensor, _Mapping]] = ..., targets: _Optional[_Union[Tensor, _Mapping]] = ..., config: _Optional[_Union[TrainingConfig, _Mapping]] = ..., carry: _Optional[_Union[StateCarry, str]] = ...) -> None: ...

class TrainStepResponse(_message.Message):
    __slots__ = ("metrics",)
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: Metrics
    def __init__(self, metrics: _Optional[_Union[Metrics, _Mapping]] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("loss", "accuracy", "grad_norm")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    loss: float
    accuracy: float
    grad_norm: float
    def __init__(self, loss: _Optional[float] = ..., accuracy: _Optional[float] = ..., grad_norm: _Optional[float] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("name", "inputs", "targets", "config", "epochs", "batch_size", "keep_order", "validation_inputs", "validation_targets", "tbptt_steps")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    KEEP_ORDER_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_INPUTS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_TARGETS_FIELD_NUMBER: _ClassVar[int]
    TBPTT_STEPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    inputs: Tensor
    targets: Tensor
    config: TrainingConfig
    epochs: int
    batch_size: int
    keep_order: bool
    validation_inputs: Tensor
    validation_targets: Tensor
    tbptt_steps: int
    def __init__(self, name: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., targets: _Optional[_Union[Tensor, _Mapping]] = ..., config: _Optional[_Union[TrainingConfig, _Mapping]] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., keep_order: _Optional[bool] = ..., validation_inputs: _Optional[_Union[Tensor, _Mapping]] = ..., validation_targets: _Optional[_Union[Tensor, _Mapping]] = ..., tbptt_steps: _Optional[int] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ("batch", "epoch")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    batch: BatchProgress
    epoch: EpochSummary
    def __init__(self, batch: _Optional[_Union[BatchProgress, _Mapping]] = ..., epoch: _Optional[_Union[EpochSummary, _Mapping]] = ...) -> None: ...

class BatchProgress(_message.Message):
    __slots__ = ("epoch", "batch", "batches", "metrics")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    batch: int
    batches: int
    metrics: Metrics
    def __init__(self, epoch: _Optional[int] = ..., batch: _Optional[int] = ..., batches: _Optional[int] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ...) -> None: ...

class EpochSummary(_message.Message):
    __slots__ = ("epoch", "metrics", "validation_metrics", "samples_per_second")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_METRICS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    metrics: Metrics
    validation_metrics: Metrics
    samples_per_second: float
    def __init__(self, epoch: _Optional[int] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ..., validation_metrics: _Optional[_Union[Metrics, _Mapping]] = ..., samples_per_second: _Optional[float] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("name", "inputs", "targets", "loss", "batch_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    inputs: Tensor
    targets: Tensor
    loss: str
    batch_size: int
    def __init__(self, name: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., targets: _Optional[_Union[Tensor, _Mapping]] = ..., loss: _Optional[str] = ..., batch_size: _Optional[int] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("metrics",)
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: Metrics
    def __init__(self, metrics: _Optional[_Union[Metrics, _Mapping]] = ...) -> None: ...

class SessionSnapshot(_message.Message):
    __slots__ = ("network", "input_shape", "batch_size", "seed", "timesteps_simulated", "parameters", "state", "optimizer", "random_state", "carried_state", "carried_batch_size", "create_time")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TIMESTEPS_SIMULATED_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    RANDOM_STATE_FIELD_NUMBER: _ClassVar[int]
    CARRIED_STATE_FIELD_NUMBER: _ClassVar[int]
    CARRIED_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    network: NetworkSpec
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    batch_size: int
    seed: int
    timesteps_simulated: int
    parameters: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    state: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    optimizer: OptimizerSnapshot
    random_state: Tensor
    carried_state: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    carried_batch_size: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, network: _Optional[_Union[NetworkSpec, _Mapping]] = ..., input_shape: _Optional[_Iterable[int]] = ..., batch_size: _Optional[int] = ..., seed: _Optional[int] = ..., timesteps_simulated: _Optional[int] = ..., parameters: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., state: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., optimizer: _Optional[_Union[OptimizerSnapshot, _Mapping]] = ..., random_state: _Optional[_Union[Tensor, _Mapping]] = ..., carried_state: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., carried_batch_size: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class OptimizerSnapshot(_message.Message):
    __slots__ = ("config", "tensors")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    config: OptimizerConfig
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, config: _Optional[_Union[OptimizerConfig, _Mapping]] = ..., tensors: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class ExportSessionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ExportSessionResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: SessionSnapshot
    def __init__(self, snapshot: _Optional[_Union[SessionSnapshot, _Mapping]] = ...) -> None: ...

class ImportSessionRequest(_message.Message):
    __slots__ = ("snapshot", "session_id")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    snapshot: SessionSnapshot
    session_id: str
    def __init__(self, snapshot: _Optional[_Union[SessionSnapshot, _Mapping]] = ..., session_id: _Optional[str] = ...) -> None: ...

class ImportSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...
