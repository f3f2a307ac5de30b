# The rnnbuilder-sim server image (docs/deployment.md: building, running, configuring).
#
# BASE is a CUDA-enabled PyTorch runtime by default, whose torch the image uses. Any Debian or Ubuntu image
# with python3 (>= 3.11) and its venv module works too (python:3.11-slim, say); pip then installs TORCH_SPEC.
ARG BASE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE}

# pip settings, for builds behind a proxy or from a local wheel folder (mount it with --volume);
# RUN sees ARGs as environment variables, which pip reads. Unset ones stay out of the way.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
# torch when the base has none (on the PyTorch images the base's torch satisfies it and stays).
ARG TORCH_SPEC="torch>=2.4"

SHELL ["/bin/sh", "-eu", "-c"]

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A venv that sees the base's packages (the PyTorch image's torch); the server's own dependencies go into it.
# The server runs as an unprivileged user that owns only the checkpoint folder.
# TORCH_SPEC is a range on purpose, so that a base's own torch is kept; pin it with --build-arg for a given wheel.
# hadolint ignore=DL3013
RUN python3 -m venv --system-site-packages /opt/venv \
 && useradd --system --uid 10001 --user-group --home-dir /home/rnnsim --create-home --shell /usr/sbin/nologin rnnsim \
 && mkdir -p /data/checkpoints /config \
 && chown rnnsim:rnnsim /data/checkpoints \
 && pip install --no-cache-dir "$TORCH_SPEC"

COPY pyproject.toml README.md /src/
COPY rnnbuilder /src/rnnbuilder
COPY rnnbuilder_sim /src/rnnbuilder_sim
COPY client /src/client
COPY server /src/server
# The project with its `server` extra (the client package and gRPC come with it); no test or dev tools.
RUN pip install --no-cache-dir "/src[server]" \
 && rm -rf /src \
 && python -c "import server, client, torch; print('torch', torch.__version__)"

# Every flag of `python -m server` has an RNNSIM_* variable; these are the image's defaults.
# The auth file is required: mount one at /config/auth.toml, or set RNNSIM_AUTH_FILE= (empty) to run open.
ENV RNNSIM_ADDRESS=0.0.0.0:50051 \
    RNNSIM_METRICS_PORT=9464 \
    RNNSIM_CHECKPOINT_DIR=/data/checkpoints \
    RNNSIM_AUTH_FILE=/config/auth.toml \
    RNNSIM_DEVICE=auto \
    RNNSIM_GRACE=5

VOLUME ["/data/checkpoints", "/config"]
EXPOSE 50051 9464
WORKDIR /home/rnnsim
USER 10001:10001

# The standard gRPC health service, asked by the project's own probe (exit 0 only when SERVING).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["/bin/sh", "-c", "exec python -m client health \"$RNNSIM_ADDRESS\" --timeout 5"]

# Exec form: the server is PID 1 and gets SIGTERM itself; it drains calls for RNNSIM_GRACE seconds,
# checkpoints every session and exits 0. Give `docker stop` time for that (-t / --stop-timeout).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "server"]
