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
    "client.aio": "AsyncClient AsyncSession",
    "server": """
        InvalidRequest LimitExceeded Limits SERVICE_NAME ServerConfig Session SessionManager SessionNotFound
        SimulatorServer create_server
    """,
    "rnnbuilder_sim.wire": "descriptions names networks tensors",
    "rnnbuilder_sim.wire.descriptions": "from_message from_server_info to_message to_server_info",
    "rnnbuilder_sim.wire.names": "SERVER_ID_HEADER SESSION_COLLECTION SESSION_HEADER session_id session_name",
    "rnnbuilder_sim.wire.networks": """
        NetworkSize encoder_from_message encoder_to_message factory_to_message from_message network_size to_message
    """,
    "rnnbuilder_sim.wire.tensors": """
        Checked TensorError check decode decode_torch encode encode_fields is_binary shape_of to_numpy
    """,
    "rnnbuilder": """
        GraphError INPUT_MODES Input Layer List Model ModuleFactory Network Node Placeholder RnnbuilderError
        Sequential ShapeError SpecError Stack Stacked Sum __version__ base custom describe encode initial last_state
        named_leaves nn plot porting replace_leaves rnn snn spec
    """,
    "rnnbuilder.stacked": "Stacked",
    "rnnbuilder.base": "InputBase LayerBase LayerInput ModuleFactory OuterModule",
    "rnnbuilder.describe": "ArgumentDescription ArgumentKind Descriptions TypeDescription describe describe_type",
    "rnnbuilder.custom": "CustomFactory CustomModule register_non_recurrent register_recurrent",
    "rnnbuilder.encode": "Delta Encoder Latency Rate delta latency rate",
    "rnnbuilder.plot": "raster rate_histogram traces",
    "rnnbuilder.errors": "GraphError RnnbuilderError ShapeError SpecError",
    "rnnbuilder.nir": "from_nir input_shape to_nir",
    "rnnbuilder.initial": "Constant InitialValue Ones Zeros ones zeros",
    "rnnbuilder.nn": """
        AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveMaxPool2d Affine AvgPool1d AvgPool2d BatchNorm1d BatchNorm2d
        Bilinear Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d Delay DelayState Dropout Dropout2d ELU Flatten
        GELU GroupNorm Hardtanh Identity LayerNorm LeakyReLU Linear LogSoftmax MaxPool1d MaxPool2d ReLU Scale SiLU
        Sigmoid Softmax Softplus StatelessFactory SumPool2d Tanh Unflatten Upsample delay_step
    """,
    "rnnbuilder.porting": "DROPPED_KEYS PortingError convert_state_dict original_keys",
    "rnnbuilder.rnn": "GRU LSTM MAX_LAYERS TempConvPlus2d",
    "rnnbuilder.spec": """
        FORMAT Registry builtin_registry default_registry encoder_from_spec encoder_to_spec from_spec register to_spec
    """,
    "rnnbuilder.snn": """
        ATan Adaptive Cooldown CubaLeakyIntegrateAndFire CubaLeakyIntegrator Discontinuous FastSigmoid
        IntegrateAndFire Integrator LIF LeakyIntegrateAndFire LeakyIntegrator NeuronFactory NoReset Sigmoid SpikeLinear
        StraightThrough Surrogate Threshold Triangular functional fused get_surrogate heaviside nir_functional
        set_backend surrogate_names use_backend
    """,
    "rnnbuilder.snn.nir_functional": """
        CubaFireParameters CubaParameters CubaState LeakyFireParameters LeakyParameters LeakyState
        ThresholdParameters cuba_leaky_integrate_and_fire_sequence cuba_leaky_integrate_and_fire_step
        cuba_leaky_integrator_sequence cuba_leaky_integrator_step leaky_integrate_and_fire_sequence
        leaky_integrate_and_fire_step leaky_integrator_sequence leaky_integrator_step threshold_step
    """,
    "rnnbuilder.snn.nir_neurons": """
        CubaLeakyIntegrateAndFire CubaLeakyIntegrator IntegrateAndFire Integrator LeakyIntegrateAndFire
        LeakyIntegrator Threshold
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
