# The `tokens` program: one image for migrate, worker, api and reconciler.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1 \
    PATH="/app/.venv/bin:${PATH}"

RUN pip install --no-cache-dir "uv>=0.13,<0.14" \
    && useradd --system --create-home --uid 10001 tokens \
    && install -d -o tokens -g tokens /app

WORKDIR /app
USER tokens

# Dependencies first: this layer is reused until the lock file changes.
COPY --chown=tokens:tokens pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

# Only the packages: no local .venv, data dirs or caches from the build context.
COPY --chown=tokens:tokens cli ./cli
COPY --chown=tokens:tokens db ./db
COPY --chown=tokens:tokens runtime ./runtime
COPY --chown=tokens:tokens wiring ./wiring
COPY --chown=tokens:tokens ledger ./ledger
COPY --chown=tokens:tokens worker ./worker
COPY --chown=tokens:tokens billing ./billing
COPY --chown=tokens:tokens api ./api
RUN uv sync --frozen --no-dev

ENTRYPOINT ["uv", "run", "--frozen", "--no-dev"]
CMD ["tokens", "--help"]
