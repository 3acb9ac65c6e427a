# medpg image for docker-compose.yml: the CLI, the HTTP API (`medpg serve`), the Celery worker and beat.
# `pip install .` brings the API's server too (FastAPI, uvicorn). There is no HEALTHCHECK here: the
# same image runs the one-shot migration and the workers, which serve no HTTP; docker-compose.yml
# gives the API its health check (with Python, as the image has no curl).
FROM python:3.11-slim
ARG TORCH=torch==2.13.0
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
RUN pip install "$TORCH"
COPY pyproject.toml README.md ./
COPY medpg ./medpg
COPY workers ./workers
COPY migrations ./migrations
RUN pip install .
# `medpg serve` (docker-compose.yml runs it with --host 0.0.0.0 --port 8750)
EXPOSE 8750
ENTRYPOINT ["medpg"]
