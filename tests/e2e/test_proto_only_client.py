"""The contract is complete on its own: a client generated only from the .proto files, without the
``client`` package or rnnbuilder, describes a network, creates a session and simulates.

The test generates Python code from proto/ with grpc_tools.protoc into a temporary folder and runs
a script in a separate interpreter whose sys.path is the standard library, that folder and
site-packages: neither the repository nor its editable install is importable there. The server runs
in the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO = "rnnbuilder_sim/v1/simulator.proto"

# Runs with `python -I -S`: no site processing, so no .pth files (the editable install) either.
SCRIPT = textwrap.dedent(
    """
    import importlib.util
    import json
    import struct
    import sys

    generated, site_packages, address = sys.argv[1:4]
    sys.path[:0] = [generated, *site_packages.split("|")]

    repo_modules = {name: importlib.util.find_spec(name) for name in ("client", "server", "rnnbuilder")}

    import grpc
    from rnnbuilder_sim.v1 import simulator_pb2 as pb
    from rnnbuilder_sim.v1 import simulator_pb2_grpc as pb_grpc

    T, BATCH, FEATURES, NEURONS = 6, 2, 4, 8


    def factory(type_, **args):
        message = pb.Factory(type=type_)
        for name, value in args.items():
            message.args[name].CopyFrom(value)
        return message


    network = pb.NetworkSpec(
        root=pb.Factory(
            type="Sequential",
            factories=[
                factory("nn.Linear", out_features=pb.Value(int_value=NEURONS), bias=pb.Value(bool_value=True)),
                factory(
                    "snn.LIF",
                    tau=pb.Value(number_value=5.0),
                    spike_function=pb.Value(factory_value=factory("snn.FastSigmoid", slope=pb.Value(int_value=25))),
                ),
            ],
        )
    )


    def float32_tensor(values, shape):
        return pb.Tensor(
            dtype=pb.DATA_TYPE_FLOAT32,
            shape=shape,
            data=struct.pack(f"<{len(values)}f", *values),
            encoding=pb.TENSOR_ENCODING_RAW,
        )


    def floats(tensor):
        assert tensor.dtype == pb.DATA_TYPE_FLOAT32 and tensor.encoding == pb.TENSOR_ENCODING_RAW
        return list(struct.unpack(f"<{len(tensor.data) // 4}f", tensor.data))


    def bits(tensor):
        assert tensor.encoding == pb.TENSOR_ENCODING_BITPACKED
        count = 1
        for d in tensor.shape:
            count *= d
        return [float((tensor.data[i // 8] >> (i % 8)) & 1) for i in range(count)]


    values = [3.0 * ((i * 7919) % 13) / 13 for i in range(T * BATCH * FEATURES)]
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SimulatorServiceStub(channel)
        info = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=30)
        request = pb.Session(network=network, input_shape=[FEATURES], batch_size=BATCH, seed=0)
        session = stub.CreateSession(pb.CreateSessionRequest(session=request), timeout=30).session
        run = stub.Run(pb.RunRequest(name=session.name, input=float32_tensor(values, [T, BATCH, FEATURES])), timeout=30)
        chunks = [
            pb.SimulateRequest(
                name=session.name,
                input=float32_tensor(values[: BATCH * FEATURES], [1, BATCH, FEATURES]),
                output_encoding=pb.TENSOR_ENCODING_BITPACKED,
            )
        ] * 3
        streamed = list(stub.Simulate(iter(chunks), timeout=30))
        timesteps = stub.GetSession(pb.GetSessionRequest(name=session.name), timeout=30).session.timesteps_simulated
        stub.DeleteSession(pb.DeleteSessionRequest(name=session.name), timeout=30)

    print(json.dumps({
        "repo_modules": {name: spec is not None for name, spec in repo_modules.items()},
        "generated_module": pb.__file__,
        "factory_types": list(info.factory_types),
        "session_name": session.name,
        "output_shape": list(session.output_shape),
        "run_shape": list(run.output.shape),
        "run_values": floats(run.output),
        "stream_shapes": [list(r.output.shape) for r in streamed],
        "stream_first_timesteps": [r.first_timestep for r in streamed],
        "stream_values": [v for r in streamed for v in bits(r.output)],
        "stream_bytes": [len(r.output.data) for r in streamed],
        "timesteps_simulated": timesteps,
    }))
    """
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """Python code generated from the .proto files alone, in a fresh folder."""
    out = tmp_path_factory.mktemp("generated")
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/timestamp.proto
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", PROTO]
    assert protoc.main(args) == 0, "protoc failed on the contract"
    return out


@pytest.fixture(scope="module")
def result(generated, server_address) -> dict:
    """What the proto-only script saw, as JSON."""
    site_packages = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    completed = subprocess.run(
        [sys.executable, "-I", "-S", "-c", SCRIPT, str(generated), "|".join(sorted(site_packages)), server_address],
        cwd=generated,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def test_the_script_cannot_import_the_repository(result, generated):
    """The script's generated module comes from the temporary folder; client, server and rnnbuilder are absent."""
    assert Path(result["generated_module"]).resolve().is_relative_to(generated.resolve())
    assert result["repo_modules"] == {"client": False, "server": False, "rnnbuilder": False}


def test_server_info_lists_the_factory_types(result):
    """GetServerInfo tells a bare client which factory types a network may use."""
    assert {"Sequential", "nn.Linear", "snn.LIF"} <= set(result["factory_types"])


def test_raw_messages_create_a_session(result):
    """A Sequential of nn.Linear and snn.LIF, with arguments as Value messages, becomes a session."""
    assert result["session_name"].startswith("sessions/")
    assert result["output_shape"] == [8]


def test_run_returns_spikes(result):
    """Run with a float32 Tensor returns (time, batch, 8) float32 spikes: 0 or 1, some 1."""
    assert result["run_shape"] == [6, 2, 8]
    assert len(result["run_values"]) == 6 * 2 * 8
    assert set(result["run_values"]) <= {0.0, 1.0}
    assert sum(result["run_values"]) > 0


def test_simulate_streams_bitpacked_spikes(result):
    """Simulate answers each chunk in order, bit-packed as asked, continuing the session's timesteps."""
    assert result["stream_shapes"] == [[1, 2, 8]] * 3
    assert result["stream_first_timesteps"] == [6, 7, 8]
    assert result["stream_bytes"] == [2, 2, 2]  # 16 spikes, 8 per byte
    assert len(result["stream_values"]) == 3 * 2 * 8
    assert result["timesteps_simulated"] == 9
