"""The public names of each public module, pinned: adding or removing one is a deliberate change here.

``PUBLIC`` maps a module to the names of its ``__all__``, sorted, separated by white space; a new
public module gets an entry. ``PACKAGES`` are the packages whose every module, private ones too,
declares ``__all__``.
"""

import importlib
import pkgutil

import pytest

PUBLIC: dict[str, str] = {
    "client": """
        AlreadyExistsError Client InvalidArgumentError NotFoundError Recording ResourceExhaustedError SERVER_ID_HEADER
        SESSION_HEADER ServerInfo Session SimulatorError UnauthenticatedError UnavailableError
    """,
    "server": """
        InvalidRequest LimitExceeded Limits SERVICE_NAME ServerConfig Session SessionManager SessionNotFound
        SimulatorServer create_server
    """,
    "rnnbuilder_sim.wire": "names networks tensors",
    "rnnbuilder_sim.wire.names": "SERVER_ID_HEADER SESSION_COLLECTION SESSION_HEADER session_id session_name",
    "rnnbuilder_sim.wire.networks": "factory_to_message from_message node_count to_message",
    "rnnbuilder_sim.wire.tensors": "TensorError decode decode_torch encode encode_fields is_binary shape_of to_numpy",
    "rnnbuilder": """
        GraphError INPUT_MODES Input Layer List Model ModuleFactory Network Node Placeholder RnnbuilderError
        Sequential ShapeError SpecError Stack Stacked Sum __version__ base custom initial last_state named_leaves nn
        porting replace_leaves rnn snn spec
    """,
    "rnnbuilder.stacked": "Stacked",
    "rnnbuilder.base": "InputBase LayerBase LayerInput ModuleFactory OuterModule",
    "rnnbuilder.custom": "CustomFactory CustomModule register_non_recurrent register_recurrent",
    "rnnbuilder.errors": "GraphError RnnbuilderError ShapeError SpecError",
    "rnnbuilder.initial": "Constant InitialValue Ones Zeros ones zeros",
    "rnnbuilder.nn": """
        AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveMaxPool2d AvgPool1d AvgPool2d BatchNorm1d BatchNorm2d Bilinear
        Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d Dropout Dropout2d ELU Flatten GELU GroupNorm Hardtanh
        Identity LayerNorm LeakyReLU Linear LogSoftmax MaxPool1d MaxPool2d ReLU SiLU Sigmoid Softmax Softplus
        StatelessFactory Tanh Unflatten Upsample
    """,
    "rnnbuilder.porting": "DROPPED_KEYS PortingError convert_state_dict original_keys",
    "rnnbuilder.rnn": "GRU LSTM MAX_LAYERS TempConvPlus2d",
    "rnnbuilder.spec": "FORMAT Registry builtin_registry default_registry from_spec register to_spec",
    "rnnbuilder.snn": """
        ATan Adaptive Cooldown Discontinuous FastSigmoid LIF NeuronFactory NoReset Sigmoid SpikeLinear
        StraightThrough Surrogate Triangular functional fused get_surrogate heaviside set_backend surrogate_names
        use_backend
    """,
    "rnnbuilder.snn.functional": """
        AdaptiveParameters AdaptiveState CooldownParameters CooldownState DiscontinuousParameters LIFParameters
        LIFState adaptive_sequence adaptive_step cooldown_sequence cooldown_sign cooldown_step decay
        discontinuous_step lif_sequence lif_step unroll
    """,
    "rnnbuilder.snn.fused": """
        BACKENDS adaptive cooldown get_backend lif resolve_backend set_backend triton_available use_backend
    """,
    "rnnbuilder.snn.neurons": "Adaptive Cooldown Discontinuous LIF NeuronFactory NoReset",
    "rnnbuilder.snn.surrogate": """
        ATan FastSigmoid Sigmoid SpikeLinear StraightThrough Surrogate Triangular get_surrogate heaviside
        surrogate_names
    """,
}

PACKAGES = ["rnnbuilder", "rnnbuilder_sim.wire", "client", "server"]


def modules(packages: list[str]) -> list[str]:
    """The packages and every module and subpackage under them, by dotted name."""
    found = []
    for name in packages:
        found.append(name)
        found += [m.name for m in pkgutil.walk_packages(importlib.import_module(name).__path__, f"{name}.")]
    return found


@pytest.mark.parametrize("module", PUBLIC)
def test_all_lists_exactly_the_pinned_names(module):
    """The module's ``__all__``, sorted, is the pinned list: no name added, removed or repeated."""
    assert sorted(importlib.import_module(module).__all__) == PUBLIC[module].split()


@pytest.mark.parametrize("module", modules(PACKAGES))
def test_every_module_declares_all(module):
    """Every module of the packages, private ones too, says what it exports in ``__all__``."""
    assert "__all__" in vars(importlib.import_module(module))


@pytest.mark.parametrize("module", modules(PACKAGES))
def test_every_name_in_all_exists(module):
    """Every name in a module's ``__all__`` is an attribute of the module."""
    mod = importlib.import_module(module)
    assert [name for name in getattr(mod, "__all__", []) if not hasattr(mod, name)] == []
