# One image for the API and the workers; the command picks the role.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 BITPLAN_DATA_DIR=/data
# Point PIP_EXTRA_INDEX_URL at a CPU-only torch index to keep the image small.
ARG PIP_EXTRA_INDEX_URL=""
RUN useradd --create-home --uid 1000 bitplan && mkdir /data && chown bitplan /data
# The job sandbox (service.jobs.sandbox); it needs user namespaces from the container runtime.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
WORKDIR /app
RUN pip install --no-cache-dir "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY solver solver
COPY workers workers
COPY service service
COPY migrations migrations
RUN pip install --no-cache-dir .
USER bitplan
EXPOSE 8000
CMD ["bitplan", "serve", "--host", "0.0.0.0", "--port", "8000"]
