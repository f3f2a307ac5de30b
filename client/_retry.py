"""When a call is tried again: gRPC's own retries of calls the server answered without doing
anything, and the resumption of a ``Simulate`` stream that a replica cut off."""

from __future__ import annotations

import json

import grpc

from rnnbuilder_sim.v1 import simulator_pb2 as pb

from .errors import from_rpc_error

__all__ = ["RETRY_POLICY", "STREAM_RESUMES", "Resumption", "service_config"]

_SERVICE = pb.DESCRIPTOR.services_by_name["SimulatorService"].full_name
_RETRY = {"maxAttempts": 5, "initialBackoff": "0.25s", "maxBackoff": "2s", "backoffMultiplier": 2}
RETRY_POLICY = [
    {"name": [{"service": _SERVICE}], "retryPolicy": {**_RETRY, "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]}},
    {
        "name": [{"service": _SERVICE, "method": "TrainStep"}],
        "retryPolicy": {**_RETRY, "retryableStatusCodes": ["UNAVAILABLE"]},
    },
]
"""gRPC's own retries, for calls the server answered without doing anything: UNAVAILABLE (a session
moving between replicas) and CANCELLED (a server that is stopping refuses new calls so, and drops
the result of a simulation it cut off). A TrainStep cut off may have stepped its optimizer, so it
is retried on UNAVAILABLE only."""
STREAM_RESUMES = 3
"""How often ``Session.stream`` opens a new stream after one was cut off by a server that let go of
its session (UNAVAILABLE) or stopped (CANCELLED)."""
_RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def service_config() -> str:
    """The channel's ``grpc.service_config``: ``RETRY_POLICY`` for every method."""
    return json.dumps({"methodConfig": RETRY_POLICY})


def _cut_off(error: grpc.RpcError) -> bool:
    """Whether a stream's error may be its server letting go of the session: UNAVAILABLE or
    CANCELLED; or, from grpc.aio, INTERNAL for a request written as the server was ending the
    call (the write's failure then stands in for the server's status, which it hides)."""
    if error.code() in _RESUMABLE:
        return True
    written = error.code() == grpc.StatusCode.INTERNAL and hasattr(error, "debug_error_string")
    return written and "SendMessageOperation" in error.debug_error_string()


class Resumption:
    """One ``Simulate`` stream of a session over one attempt or more: the replies counted, and
    whether an attempt that was cut off may go on where the session is.

    A stream cut off with UNAVAILABLE or CANCELLED (its session moving to another replica) is
    resumed, up to ``STREAM_RESUMES`` times, once the session is served again, if it is where the
    last reply left it; the feed then sends the unanswered chunks again.
    """

    def __init__(self, session, feed):
        self._session, self.feed = session, feed
        self._expected = session.timesteps_simulated
        self._resumes = 0
        self._error: grpc.RpcError | None = None

    def answered(self, reply):
        """Note a reply (the oldest unanswered chunk's) and return it."""
        self._expected = reply.first_timestep + self.feed.answered()
        self._session.timesteps_simulated = self._expected
        return reply

    def cut_off(self, error: grpc.RpcError) -> None:
        """The attempt failed: raise its error unless another may follow (then refresh the session
        and call ``resumable``)."""
        if not _cut_off(error) or self._resumes == STREAM_RESUMES:
            raise from_rpc_error(error) from None
        self._resumes += 1
        self._error = error
        self.feed.restart()

    def resumable(self, refreshed) -> None:
        """Raise the error that cut the stream off if the refreshed session is not where the last
        reply left it (a chunk went through unanswered: the stream can't go on exactly)."""
        if refreshed.timesteps_simulated != self._expected:
            raise from_rpc_error(self._error) from None
