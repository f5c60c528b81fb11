"""The container's entrypoint (``ENTRYPOINT ["python", "/app/entrypoint.py"]``): see deploy.main."""

from deploy.main import cli

if __name__ == "__main__":
    cli()
