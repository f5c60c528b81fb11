# The action's container. Every run that uses the action builds or pulls it, so it stays small: a slim
# Python, the runtime dependencies installed from hashes, the package. No compilers, no caches, no tests.
#
# The base is pinned by tag here, because a digest can only be resolved against the registry.
# .github/workflows/release.yml resolves this tag to its multi-arch digest at release time and builds
# with PYTHON_BASE=<tag>@sha256:<digest>, so each published image is built on, and labelled with, one
# exact base. Bump the tag here for a newer Python patch release.
ARG PYTHON_BASE=python:3.11.17-slim-bookworm
FROM ${PYTHON_BASE}

# Unbuffered: log lines and workflow commands reach the runner as they happen, in order.
# No bytecode at run time: the container is thrown away after one run; the build compiles it once.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# --require-hashes: pip installs exactly the files whose sha256 is in requirements.lock (wheels for
# linux/amd64 and linux/arm64, sdists as a fallback) or nothing. setuptools and wheel are build tools
# the action never needs at run time, so they leave the image.
COPY requirements.lock /app/requirements.lock
RUN pip install --no-cache-dir --disable-pip-version-check --require-hashes -r /app/requirements.lock \
    && pip uninstall --yes --disable-pip-version-check setuptools wheel

COPY entrypoint.py /app/entrypoint.py
COPY deploy /app/deploy
RUN python -m compileall -q /app

# No USER line on purpose: the runner mounts the workspace and the file-command files
# (GITHUB_OUTPUT, GITHUB_STEP_SUMMARY) owned by its own user and runs the container as the image's
# user. On GitHub-hosted runners a non-root USER cannot write GITHUB_OUTPUT there; root can.
ENTRYPOINT ["python", "/app/entrypoint.py"]
