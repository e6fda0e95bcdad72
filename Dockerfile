# The sweep image: the `sweep` command as the entrypoint, run by an unprivileged user.
#
#   docker build -t sweep .
#   docker run --rm -e SWEEP_STORAGE=postgresql+psycopg://USER:PASSWORD@HOST/DB sweep run studies/digits-lstm.toml
#
# docker-compose.yml runs PostgreSQL, optuna-dashboard and any number of workers from this image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=3

WORKDIR /src

# The dependencies first, from pyproject.toml and an empty package, so that a change under
# sweep/ reinstalls only sweep itself and not TensorFlow. The empty package's build output
# goes too: setuptools would keep its newer empty files over the real ones copied below.
COPY pyproject.toml README.md ./
RUN mkdir sweep && touch sweep/__init__.py \
    && pip install --no-cache-dir . \
    && rm -rf build sweep sweep.egg-info

COPY sweep ./sweep
RUN pip install --no-cache-dir --no-deps --force-reinstall . \
    && sweep --version

RUN useradd --create-home --shell /usr/sbin/nologin sweep \
    && install -d -o sweep -g sweep /app
WORKDIR /app
COPY --chown=sweep:sweep studies ./studies
USER sweep

# `docker stop` sends SIGTERM: `sweep run` and `sweep worker` end the running trial as FAIL
# "interrupted" and exit 143 (give them time: stop_grace_period in docker-compose.yml).
# The exec form makes `sweep` PID 1 itself, or the child of an init (`init: true`, tini),
# so the signal reaches it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sweep"]
CMD ["--help"]
