# promptq: one image for the API, the workers and the migration step.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY jobs ./jobs
COPY worker ./worker
COPY migrations ./migrations
RUN pip install . && useradd --system --uid 10001 promptq && mkdir /data && chown promptq /data

USER promptq
ENV PROMPTQ_DATA_DIR=/data
CMD ["promptq", "--help"]
