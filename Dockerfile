# A small, pinned base: the action starts on every run, so the image stays lean.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY requirements.txt /app/requirements.txt
RUN pip install --no-cache-dir -r /app/requirements.txt

COPY entrypoint.py /app/entrypoint.py
COPY deploy /app/deploy

# No USER line on purpose: the runner mounts the workspace and file-command files owned by its
# own user and runs the container as the image's user; root can write GITHUB_OUTPUT there.
ENTRYPOINT ["python", "/app/entrypoint.py"]
