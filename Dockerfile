# guardrail's HTTP service on the CPU: `docker compose up` (see docker-compose.yml).
#
# torch must resolve to a CPU build: the default PyPI wheel for Linux pulls in the CUDA
# libraries (gigabytes). Pass the PyTorch CPU index as a build argument, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
# and torch==2.13.0 is installed from it before the project; without it, pip takes torch
# from PyPI.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    GUARDRAIL_CACHE_DIR=/data/cache

WORKDIR /app
# Only what the package needs: the build context may also hold a virtualenv and caches.
COPY pyproject.toml README.md ./
COPY guardrail ./guardrail
COPY retrievers ./retrievers
COPY policies ./policies
COPY service ./service
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install "torch==2.13.0" --index-url "$TORCH_INDEX_URL"; \
    fi \
    && pip install ".[cpu,escalation]"

EXPOSE 8000
# Models are converted into GUARDRAIL_CACHE_DIR on first start (about a minute); mount a
# volume there to keep them. The index must be built first: `guardrail ingest PATH...`.
CMD ["guardrail", "serve", "--host", "0.0.0.0", "--port", "8000"]
