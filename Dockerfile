# medpg image for docker-compose.yml: the CLI, the Celery worker and beat.
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
ENTRYPOINT ["medpg"]
