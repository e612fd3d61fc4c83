# One image for every lab service: the five servers and Locust (see docker-compose.yml).
#
#   docker build -t webmodels:lab .
#   # no registry (air-gapped, TLS-inspecting proxy): a debootstrapped base, see scripts/build-base-image.sh
#   docker build --build-arg PYTHON_IMAGE=webmodels-base:bookworm -t webmodels:lab .
#
# Plain Dockerfile syntax (no BuildKit-only features) so that the legacy builder used by Debian's
# docker-compose 1.29 builds it too. Only `python3` is assumed: the debootstrap base has no `python`.
ARG PYTHON_IMAGE=python:3.12-slim
FROM ${PYTHON_IMAGE}

# Optional package index settings for pip, e.g. a mirror (`--build-arg PIP_INDEX_URL=...`).
# Empty values are ignored by pip; nothing is baked into the image's environment.
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The servers run as an unprivileged user; the venv and the source stay root-owned (read-only to it).
RUN python3 -m venv /opt/venv \
    && useradd --create-home --home-dir /home/lab --uid 10001 --user-group --shell /usr/sbin/nologin lab

WORKDIR /app

# Dependency layer: only pyproject.toml, so editing the source does not reinstall the dependencies.
# The build backend is installed here too, so the source layer below builds offline.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
print("\n".join(p["project"].get("dependencies", []) + p.get("build-system", {}).get("requires", ["setuptools>=64", "wheel"])))' \
        > /tmp/requirements.txt \
    && cat /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Source layer.
COPY src/ src/
COPY servers/ servers/
COPY loadtest/ loadtest/
COPY lab/ lab/
COPY pyproject.toml README* LICENSE* ./
RUN pip install --no-deps --no-build-isolation . \
    && rm -rf build src/*.egg-info *.egg-info \
    && webmodels --help >/dev/null

# The lab's event log lives on a named volume mounted here (docker-compose.yml); a fresh volume copies this
# directory, so the servers (user lab) can append to it.
RUN mkdir -p /var/lib/webmodels && chown lab:lab /var/lib/webmodels

USER lab
# threadpool, prefork, eventloop, hybrid-threads, hybrid-loop, Locust web UI
EXPOSE 8001 8002 8003 8004 8005 8089
CMD ["webmodels", "--help"]
